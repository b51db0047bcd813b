//! The probe-suite format: a YAML document of properties a model must show, parsed into
//! typed, validated structs. See the crate README for the format and an example.
//!
//! Parsing is strict (unknown fields are errors) and every error names the probe (by its
//! `name`, else its position) and the field at fault, because a suite comes from a
//! ConfigMap that a person wrote, and "invalid YAML" helps nobody fix it.

use std::fmt;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// The `apiVersion` every suite carries.
pub const API_VERSION: &str = "lotabots.io/probes/v1alpha1";
/// The `kind` every suite carries.
pub const KIND: &str = "ProbeSuite";
/// Largest suite accepted: far above any hand-written suite, small enough that a hostile
/// ConfigMap cannot make the runner parse without end (ConfigMaps stop at 1 MiB anyway).
pub const MAX_SUITE_BYTES: usize = 1 << 20;
/// Most probes in one suite (each runs the model a few times).
pub const MAX_PROBES: usize = 1000;
/// Longest input text, in bytes; longer inputs are truncated by the tokenizer anyway, so a
/// longer one is a mistake rather than a probe.
pub const MAX_TEXT_BYTES: usize = 16 << 10;
/// Longest probe name (it is echoed in reports and conditions).
pub const MAX_NAME_BYTES: usize = 128;

/// What the model does, which decides the properties that make sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Task {
    /// A sentence-embedding model: text in, one vector out.
    Embedding,
    /// A text-generation model: text in, text out (the format is defined; this runner
    /// does not run such models yet).
    Generation,
    /// A text classifier: text in, a label out (defined; not run yet).
    Classification,
}

impl Task {
    /// The name as written in a suite.
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Embedding => "embedding",
            Task::Generation => "generation",
            Task::Classification => "classification",
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `similarityOrder`: cos(anchor, closer) > cos(anchor, farther) + margin.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimilarityOrder {
    /// The reference text.
    pub anchor: String,
    /// The text that must be more similar to the anchor.
    pub closer: String,
    /// The text that must be less similar to the anchor.
    pub farther: String,
    /// How much more similar `closer` must be (cosine units). Default 0.
    #[serde(default)]
    pub margin: f64,
}

/// `similarityAtLeast` / `similarityAtMost`: cos(a, b) compared with a bound.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimilarityBound {
    /// One text.
    pub a: String,
    /// The other text.
    pub b: String,
    /// The bound on their cosine similarity, in [-1, 1].
    pub bound: f64,
}

/// `exact`: the generated text equals `output` (generation suites).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exact {
    /// The prompt.
    pub input: String,
    /// The expected output, compared after trimming surrounding whitespace.
    pub output: String,
}

/// `pattern`: the generated text matches a regular expression (generation suites).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pattern {
    /// The prompt.
    pub input: String,
    /// The expression (Rust `regex` syntax), searched anywhere in the output unless
    /// anchored with `^…$`.
    pub regex: String,
}

/// `label`: the classifier's top label for `input` is `label` (classification suites).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Label {
    /// The text to classify.
    pub input: String,
    /// The expected label.
    pub label: String,
}

/// A quantity that [`NumericBound`] measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Quantity {
    /// Euclidean (L2) norm of the embedding of `input` (embedding suites).
    EmbeddingNorm,
    /// Number of components of the embedding of `input` (embedding suites).
    EmbeddingDimension,
}

impl Quantity {
    /// The name as written in a suite.
    pub fn as_str(self) -> &'static str {
        match self {
            Quantity::EmbeddingNorm => "embeddingNorm",
            Quantity::EmbeddingDimension => "embeddingDimension",
        }
    }

    fn task(self) -> Task {
        match self {
            Quantity::EmbeddingNorm | Quantity::EmbeddingDimension => Task::Embedding,
        }
    }
}

/// `numericBound`: a measured quantity lies in [min, max] (either end may be open).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumericBound {
    /// The text the quantity is measured on.
    pub input: String,
    /// What is measured.
    pub quantity: Quantity,
    /// Inclusive lower bound.
    #[serde(default)]
    pub min: Option<f64>,
    /// Inclusive upper bound.
    #[serde(default)]
    pub max: Option<f64>,
}

/// The one property a probe checks.
#[derive(Debug, Clone)]
pub enum Property {
    /// See [`SimilarityOrder`].
    SimilarityOrder(SimilarityOrder),
    /// cos(a, b) ≥ bound.
    SimilarityAtLeast(SimilarityBound),
    /// cos(a, b) ≤ bound.
    SimilarityAtMost(SimilarityBound),
    /// See [`Exact`].
    Exact(Exact),
    /// See [`Pattern`]; the expression compiled.
    Pattern(Pattern, regex::Regex),
    /// See [`Label`].
    Label(Label),
    /// See [`NumericBound`].
    NumericBound(NumericBound),
}

impl Property {
    /// The field name as written in a suite.
    pub fn field(&self) -> &'static str {
        match self {
            Property::SimilarityOrder(_) => "similarityOrder",
            Property::SimilarityAtLeast(_) => "similarityAtLeast",
            Property::SimilarityAtMost(_) => "similarityAtMost",
            Property::Exact(_) => "exact",
            Property::Pattern(..) => "pattern",
            Property::Label(_) => "label",
            Property::NumericBound(_) => "numericBound",
        }
    }

    /// The only task whose models this property applies to.
    pub fn task(&self) -> Task {
        match self {
            Property::SimilarityOrder(_)
            | Property::SimilarityAtLeast(_)
            | Property::SimilarityAtMost(_) => Task::Embedding,
            Property::Exact(_) | Property::Pattern(..) => Task::Generation,
            Property::Label(_) => Task::Classification,
            Property::NumericBound(b) => b.quantity.task(),
        }
    }

    /// Every input text of the property, with the field it comes from.
    fn texts(&self) -> Vec<(&'static str, &str)> {
        match self {
            Property::SimilarityOrder(o) => vec![
                ("anchor", o.anchor.as_str()),
                ("closer", o.closer.as_str()),
                ("farther", o.farther.as_str()),
            ],
            Property::SimilarityAtLeast(b) | Property::SimilarityAtMost(b) => {
                vec![("a", b.a.as_str()), ("b", b.b.as_str())]
            }
            Property::Exact(e) => vec![("input", e.input.as_str())],
            Property::Pattern(p, _) => vec![("input", p.input.as_str())],
            Property::Label(l) => vec![("input", l.input.as_str())],
            Property::NumericBound(n) => vec![("input", n.input.as_str())],
        }
    }
}

/// One named probe.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Unique within the suite; names the outcome in the report.
    pub name: String,
    /// What must hold.
    pub property: Property,
}

/// `metadata` of a suite (informational).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// The suite's name.
    #[serde(default)]
    pub name: Option<String>,
    /// What it checks, in words.
    #[serde(default)]
    pub description: Option<String>,
}

/// A parsed, validated probe suite.
#[derive(Debug, Clone)]
pub struct Suite {
    /// `sha256:<hex>` of the suite's bytes as given: what a report says was run.
    pub digest: String,
    /// Informational metadata.
    pub metadata: Metadata,
    /// The model's task.
    pub task: Task,
    /// The probes, in suite order.
    pub probes: Vec<Probe>,
}

/// Why a suite was refused. The message names the probe and field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("probe suite: {0}")]
pub struct SuiteError(pub String);

/// The document as written, before the probes are looked at one by one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSuite {
    api_version: String,
    kind: String,
    #[serde(default)]
    metadata: Metadata,
    task: Task,
    probes: Vec<serde_yaml::Value>,
}

/// One probe as written: `name` and any of the properties (exactly one is checked after).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawProbe {
    name: String,
    similarity_order: Option<SimilarityOrder>,
    similarity_at_least: Option<SimilarityBound>,
    similarity_at_most: Option<SimilarityBound>,
    exact: Option<Exact>,
    pattern: Option<Pattern>,
    label: Option<Label>,
    numeric_bound: Option<NumericBound>,
}

/// The property fields, for messages.
const PROPERTY_FIELDS: &str =
    "similarityOrder, similarityAtLeast, similarityAtMost, exact, pattern, label, numericBound";

/// A suite's digest: `sha256:` + the SHA-256 of its bytes exactly as given.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl Suite {
    /// Parses and validates a suite from its bytes (YAML; JSON is YAML too).
    pub fn parse(bytes: &[u8]) -> Result<Self, SuiteError> {
        let err = |m: String| SuiteError(m);
        if bytes.len() > MAX_SUITE_BYTES {
            return Err(err(format!(
                "{} bytes, more than the {MAX_SUITE_BYTES} a suite may have",
                bytes.len()
            )));
        }
        let digest = digest_of(bytes);
        let text = std::str::from_utf8(bytes).map_err(|e| err(format!("not UTF-8 text: {e}")))?;
        let raw: RawSuite =
            serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text))
                .map_err(|e| err(with_path(e)))?;
        if raw.api_version != API_VERSION {
            return Err(err(format!(
                "apiVersion is {:?}, expected {API_VERSION}",
                raw.api_version
            )));
        }
        if raw.kind != KIND {
            return Err(err(format!("kind is {:?}, expected {KIND}", raw.kind)));
        }
        if raw.probes.is_empty() {
            return Err(err("probes: the suite has no probe".into()));
        }
        if raw.probes.len() > MAX_PROBES {
            return Err(err(format!(
                "probes: {} probes, more than the {MAX_PROBES} a suite may have",
                raw.probes.len()
            )));
        }
        let mut probes: Vec<Probe> = Vec::with_capacity(raw.probes.len());
        for (i, value) in raw.probes.into_iter().enumerate() {
            let probe = parse_probe(i, value, raw.task)?;
            if let Some(first) = probes.iter().position(|p| p.name == probe.name) {
                return Err(err(format!(
                    "probes[{i}] name {:?}: already used by probes[{first}]; names must be unique",
                    probe.name
                )));
            }
            probes.push(probe);
        }
        Ok(Self {
            digest,
            metadata: raw.metadata,
            task: raw.task,
            probes,
        })
    }
}

/// A deserialisation error prefixed with the path of the field at fault, when it is
/// below the document's root.
fn with_path(e: serde_path_to_error::Error<serde_yaml::Error>) -> String {
    let mut path = e.path().to_string();
    let inner = e.into_inner().to_string();
    // The path of an unknown field ends with that field: name where it was found.
    if let Some((parent, last)) = path.rsplit_once('.').or(Some((".", path.as_str())))
        && inner.starts_with(&format!("unknown field `{last}`"))
    {
        path = parent.to_owned();
    }
    if path == "." {
        inner
    } else {
        format!("{path}: {inner}")
    }
}

/// How an error names a probe: `probe "NAME" (probes[I])`, or only the index when the
/// name itself is missing.
fn probe_label(index: usize, value: &serde_yaml::Value) -> String {
    match value.get("name").and_then(serde_yaml::Value::as_str) {
        Some(name) => format!("probe {name:?} (probes[{index}])"),
        None => format!("probes[{index}]"),
    }
}

fn parse_probe(index: usize, value: serde_yaml::Value, task: Task) -> Result<Probe, SuiteError> {
    let label = probe_label(index, &value);
    let err = |m: String| SuiteError(format!("{label}: {m}"));
    // With the path, a missing or unknown field inside a property is named with the
    // property: "similarityOrder: missing field `farther`".
    let raw: RawProbe = serde_path_to_error::deserialize(value).map_err(|e| err(with_path(e)))?;
    if raw.name.trim().is_empty() {
        return Err(err("name: must not be empty".into()));
    }
    if raw.name.len() > MAX_NAME_BYTES {
        return Err(err(format!("name: longer than {MAX_NAME_BYTES} bytes")));
    }
    let mut found: Vec<Property> = Vec::new();
    if let Some(p) = raw.similarity_order {
        found.push(Property::SimilarityOrder(p));
    }
    if let Some(p) = raw.similarity_at_least {
        found.push(Property::SimilarityAtLeast(p));
    }
    if let Some(p) = raw.similarity_at_most {
        found.push(Property::SimilarityAtMost(p));
    }
    if let Some(p) = raw.exact {
        found.push(Property::Exact(p));
    }
    if let Some(p) = raw.pattern {
        let re = regex::Regex::new(&p.regex)
            .map_err(|e| err(format!("pattern.regex: not a valid expression: {e}")))?;
        found.push(Property::Pattern(p, re));
    }
    if let Some(p) = raw.label {
        found.push(Property::Label(p));
    }
    if let Some(p) = raw.numeric_bound {
        found.push(Property::NumericBound(p));
    }
    let property = match found.len() {
        1 => found.remove(0),
        0 => {
            return Err(err(format!(
                "no property: give exactly one of {PROPERTY_FIELDS}"
            )));
        }
        _ => {
            let names: Vec<&str> = found.iter().map(Property::field).collect();
            return Err(err(format!(
                "{} properties ({}): give exactly one",
                names.len(),
                names.join(", ")
            )));
        }
    };
    let field = property.field();
    if property.task() != task {
        return Err(err(format!(
            "{field} applies to {} models, but the suite's task is {task}",
            property.task()
        )));
    }
    for (name, text) in property.texts() {
        if text.trim().is_empty() {
            return Err(err(format!("{field}.{name}: must not be empty")));
        }
        if text.len() > MAX_TEXT_BYTES {
            return Err(err(format!(
                "{field}.{name}: longer than {MAX_TEXT_BYTES} bytes"
            )));
        }
    }
    check_numbers(&property).map_err(|m| err(format!("{field}.{m}")))?;
    Ok(Probe {
        name: raw.name,
        property,
    })
}

/// Bounds that can never hold (or are not numbers) are mistakes in the suite, not
/// failures of the model.
fn check_numbers(property: &Property) -> Result<(), String> {
    let cosine = |field: &str, v: f64| {
        if !(-1.0..=1.0).contains(&v) {
            return Err(format!(
                "{field}: {v} is not a cosine similarity (between -1 and 1)"
            ));
        }
        Ok(())
    };
    match property {
        Property::SimilarityOrder(o) => {
            if !(0.0..=2.0).contains(&o.margin) {
                return Err(format!(
                    "margin: {} is not between 0 and 2 (a difference of two cosines)",
                    o.margin
                ));
            }
        }
        Property::SimilarityAtLeast(b) | Property::SimilarityAtMost(b) => cosine("bound", b.bound)?,
        Property::NumericBound(n) => {
            if n.min.is_none() && n.max.is_none() {
                return Err("min/max: give at least one bound".into());
            }
            for (field, v) in [("min", n.min), ("max", n.max)] {
                if let Some(v) = v
                    && !v.is_finite()
                {
                    return Err(format!("{field}: {v} is not a finite number"));
                }
            }
            if let (Some(lo), Some(hi)) = (n.min, n.max)
                && lo > hi
            {
                return Err(format!("min: {lo} is greater than max {hi}"));
            }
        }
        Property::Exact(_) | Property::Pattern(..) | Property::Label(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: lotabots.io/probes/v1alpha1
kind: ProbeSuite
metadata:
  name: t
task: embedding
probes:
  - name: order
    similarityOrder: {anchor: "a", closer: "b", farther: "c", margin: 0.1}
  - name: least
    similarityAtLeast: {a: "a", b: "b", bound: 0.5}
  - name: most
    similarityAtMost: {a: "a", b: "c", bound: 0.2}
  - name: norm
    numericBound: {input: "a", quantity: embeddingNorm, min: 0.99, max: 1.01}
"#;

    fn parse_err(yaml: &str) -> String {
        Suite::parse(yaml.as_bytes()).unwrap_err().to_string()
    }

    fn with_probe(probe: &str) -> String {
        format!(
            "apiVersion: lotabots.io/probes/v1alpha1\nkind: ProbeSuite\ntask: embedding\nprobes:\n{probe}"
        )
    }

    #[test]
    fn a_good_suite_parses_with_its_digest() {
        let s = Suite::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(s.task, Task::Embedding);
        assert_eq!(s.metadata.name.as_deref(), Some("t"));
        let fields: Vec<_> = s.probes.iter().map(|p| p.property.field()).collect();
        assert_eq!(
            fields,
            [
                "similarityOrder",
                "similarityAtLeast",
                "similarityAtMost",
                "numericBound"
            ]
        );
        assert_eq!(
            s.digest,
            format!("sha256:{}", hex::encode(Sha256::digest(GOOD.as_bytes())))
        );
        let Property::SimilarityOrder(o) = &s.probes[0].property else {
            panic!("{:?}", s.probes[0]);
        };
        assert_eq!((o.closer.as_str(), o.margin), ("b", 0.1));
        // One changed byte is another suite.
        let other = Suite::parse(GOOD.replace("0.1}", "0.2}").as_bytes()).unwrap();
        assert_ne!(other.digest, s.digest);
    }

    #[test]
    fn wrong_api_version_and_kind_are_named() {
        let e = parse_err(&GOOD.replace("probes/v1alpha1", "probes/v2"));
        assert!(e.contains("apiVersion is \"lotabots.io/probes/v2\""), "{e}");
        assert!(e.contains("expected lotabots.io/probes/v1alpha1"), "{e}");
        let e = parse_err(&GOOD.replace("kind: ProbeSuite", "kind: Suite"));
        assert!(e.contains("kind is \"Suite\", expected ProbeSuite"), "{e}");
    }

    #[test]
    fn unknown_property_names_the_probe_and_field() {
        let e = parse_err(&with_probe(
            "  - name: typo\n    similarityOrdr: {anchor: a, closer: b, farther: c}\n",
        ));
        assert!(
            e.contains("probe \"typo\" (probes[0]): unknown field `similarityOrdr`"),
            "{e}"
        );
        // Inside a property too.
        let e = parse_err(&with_probe(
            "  - name: extra\n    similarityAtLeast: {a: x, b: y, bound: 0.5, bnd: 1}\n",
        ));
        assert!(
            e.contains("probe \"extra\" (probes[0]): similarityAtLeast: unknown field `bnd`"),
            "{e}"
        );
        // And at the top level.
        let e = parse_err(&format!("{GOOD}spec: {{}}\n"));
        assert!(e.starts_with("probe suite: unknown field `spec`"), "{e}");
    }

    #[test]
    fn missing_fields_are_named() {
        let e = parse_err(&with_probe(
            "  - name: short\n    similarityOrder: {anchor: a, closer: b}\n",
        ));
        assert!(
            e.contains("probe \"short\" (probes[0]): similarityOrder: missing field `farther`"),
            "{e}"
        );
        let e = parse_err(&with_probe(
            "  - similarityAtMost: {a: x, b: y, bound: 0.5}\n",
        ));
        assert!(e.contains("probes[0]"), "{e}");
        assert!(e.contains("missing field `name`"), "{e}");
        let e = parse_err(&GOOD.replace("task: embedding\n", ""));
        assert!(e.contains("missing field `task`"), "{e}");
        let e = parse_err(&GOOD.replace("  name: t\n", "  name: t\n  owner: x\n"));
        assert!(e.contains("metadata: unknown field `owner`"), "{e}");
        let e = parse_err(&GOOD.replace("task: embedding", "task: chat"));
        assert!(e.contains("task: unknown variant `chat`"), "{e}");
    }

    #[test]
    fn exactly_one_property_per_probe() {
        let e = parse_err(&with_probe("  - name: bare\n"));
        assert!(e.contains("probe \"bare\""), "{e}");
        assert!(e.contains("no property"), "{e}");
        let e = parse_err(&with_probe(
            "  - name: two\n    similarityAtMost: {a: x, b: y, bound: 0.5}\n    similarityAtLeast: {a: x, b: y, bound: 0.1}\n",
        ));
        assert!(
            e.contains("2 properties (similarityAtLeast, similarityAtMost)"),
            "{e}"
        );
    }

    #[test]
    fn properties_of_another_task_are_refused() {
        let e = parse_err(&with_probe(
            "  - name: gen\n    exact: {input: hi, output: hello}\n",
        ));
        assert!(
            e.contains(
                "probe \"gen\" (probes[0]): exact applies to generation models, but the suite's task is embedding"
            ),
            "{e}"
        );
        let e = parse_err(&with_probe(
            "  - name: cls\n    label: {input: hi, label: greeting}\n",
        ));
        assert!(e.contains("label applies to classification models"), "{e}");
        // The same probes are fine in suites of their own task.
        let gen_suite = "apiVersion: lotabots.io/probes/v1alpha1\nkind: ProbeSuite\ntask: generation\nprobes:\n  - name: gen\n    exact: {input: hi, output: hello}\n  - name: pat\n    pattern: {input: hi, regex: '^h.*o$'}\n";
        let s = Suite::parse(gen_suite.as_bytes()).unwrap();
        assert_eq!(s.task, Task::Generation);
        let e = parse_err(&gen_suite.replace("'^h.*o$'", "'(unclosed'"));
        assert!(
            e.contains("probe \"pat\" (probes[1]): pattern.regex: not a valid expression"),
            "{e}"
        );
    }

    #[test]
    fn impossible_bounds_are_refused() {
        let cases = [
            (
                "similarityAtLeast: {a: x, b: y, bound: 1.5}",
                "similarityAtLeast.bound: 1.5 is not a cosine similarity",
            ),
            (
                "similarityOrder: {anchor: a, closer: b, farther: c, margin: -0.1}",
                "similarityOrder.margin: -0.1 is not between 0 and 2",
            ),
            (
                "numericBound: {input: x, quantity: embeddingNorm}",
                "numericBound.min/max: give at least one bound",
            ),
            (
                "numericBound: {input: x, quantity: embeddingNorm, min: 2, max: 1}",
                "numericBound.min: 2 is greater than max 1",
            ),
            (
                "numericBound: {input: x, quantity: embeddingNorm, min: .nan}",
                "numericBound.min: NaN is not a finite number",
            ),
            (
                "numericBound: {input: x, quantity: embeddingLength, min: 1}",
                "unknown variant `embeddingLength`",
            ),
            (
                "similarityAtMost: {a: '  ', b: y, bound: 0.5}",
                "similarityAtMost.a: must not be empty",
            ),
        ];
        for (property, want) in cases {
            let e = parse_err(&with_probe(&format!("  - name: p\n    {property}\n")));
            assert!(e.contains("probe \"p\" (probes[0])"), "{e}");
            assert!(e.contains(want), "{property}: {e}");
        }
    }

    #[test]
    fn names_are_unique_and_the_suite_is_not_empty() {
        let e = parse_err(&with_probe(
            "  - name: p\n    similarityAtMost: {a: x, b: y, bound: 0.5}\n  - name: p\n    similarityAtMost: {a: x, b: z, bound: 0.5}\n",
        ));
        assert!(
            e.contains("probes[1] name \"p\": already used by probes[0]"),
            "{e}"
        );
        let e = parse_err(&with_probe("  []\n").replace("probes:\n  []", "probes: []"));
        assert!(e.contains("the suite has no probe"), "{e}");
    }

    #[test]
    fn oversized_and_non_text_suites_are_refused() {
        let big = vec![b'#'; MAX_SUITE_BYTES + 1];
        assert!(Suite::parse(&big).unwrap_err().0.contains("more than"));
        assert!(
            Suite::parse(&[0xff, 0xfe])
                .unwrap_err()
                .0
                .contains("not UTF-8")
        );
    }
}
