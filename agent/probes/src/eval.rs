//! Judging each probe's property on the model's outputs. Pure given the vectors, so the
//! logic is tested without a model; [`Embed`] is what a model provides.

use std::collections::BTreeMap;

use lotabots_crds::workload::ProbeOutcome;

use crate::embed::{Embedder, ModelError};
use crate::suite::{NumericBound, Property, Quantity, SimilarityBound, SimilarityOrder, Suite};

/// A sentence-embedding model, as the probes see it.
pub trait Embed {
    /// One vector per text, in order.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError>;
}

impl Embed for Embedder {
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        Embedder::embed(self, texts)
    }
}

/// Cosine similarity, in f64 (the vectors need not be unit length). A zero vector has
/// no direction: its similarity to anything is 0.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    dot / (na.sqrt() * nb.sqrt())
}

/// Euclidean norm.
pub fn norm(a: &[f32]) -> f64 {
    a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
}

/// The texts of an embedding suite, each once, in first-seen order: every distinct text
/// runs through the model once however many probes use it.
pub fn distinct_texts(suite: &Suite) -> Vec<&str> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for p in &suite.probes {
        let texts: Vec<&str> = match &p.property {
            Property::SimilarityOrder(o) => vec![&o.anchor, &o.closer, &o.farther],
            Property::SimilarityAtLeast(b) | Property::SimilarityAtMost(b) => vec![&b.a, &b.b],
            Property::NumericBound(n) => vec![&n.input],
            Property::Exact(_) | Property::Pattern(..) | Property::Label(_) => vec![],
        };
        for t in texts {
            if seen.insert(t) {
                out.push(t);
            }
        }
    }
    out
}

/// Runs every probe of an embedding suite on `model`, in suite order.
pub fn evaluate_embedding(
    suite: &Suite,
    model: &dyn Embed,
) -> Result<Vec<ProbeOutcome>, ModelError> {
    let texts = distinct_texts(suite);
    let vectors = model.embed(&texts)?;
    if vectors.len() != texts.len() {
        return Err(ModelError::Unsupported(format!(
            "the model returned {} vectors for {} texts",
            vectors.len(),
            texts.len()
        )));
    }
    let by_text: BTreeMap<&str, &[f32]> = texts
        .iter()
        .copied()
        .zip(vectors.iter().map(Vec::as_slice))
        .collect();
    let v = |t: &str| by_text[t];
    Ok(suite
        .probes
        .iter()
        .map(|p| {
            let (passed, detail) = match &p.property {
                Property::SimilarityOrder(o) => similarity_order(o, &v),
                Property::SimilarityAtLeast(b) => similarity_bound(b, &v, true),
                Property::SimilarityAtMost(b) => similarity_bound(b, &v, false),
                Property::NumericBound(n) => numeric_bound(n, v(&n.input)),
                // Parsing keeps these out of embedding suites.
                other => (
                    false,
                    format!("{} cannot be judged on an embedding model", other.field()),
                ),
            };
            ProbeOutcome {
                name: p.name.clone(),
                passed,
                detail,
            }
        })
        .collect())
}

fn similarity_order<'a>(o: &SimilarityOrder, v: &dyn Fn(&str) -> &'a [f32]) -> (bool, String) {
    let near = cosine(v(&o.anchor), v(&o.closer));
    let far = cosine(v(&o.anchor), v(&o.farther));
    let passed = near > far + o.margin;
    let margin = if o.margin > 0.0 {
        format!(" + margin {:.4}", o.margin)
    } else {
        String::new()
    };
    let relation = if passed { ">" } else { "is not >" };
    (
        passed,
        format!("cos(anchor, closer)={near:.4} {relation} cos(anchor, farther)={far:.4}{margin}"),
    )
}

fn similarity_bound<'a>(
    b: &SimilarityBound,
    v: &dyn Fn(&str) -> &'a [f32],
    at_least: bool,
) -> (bool, String) {
    let sim = cosine(v(&b.a), v(&b.b));
    let (passed, relation) = if at_least {
        (
            sim >= b.bound,
            if sim >= b.bound { ">=" } else { "is below" },
        )
    } else {
        (
            sim <= b.bound,
            if sim <= b.bound { "<=" } else { "is above" },
        )
    };
    (
        passed,
        format!("cos(a, b)={sim:.4} {relation} {:.4}", b.bound),
    )
}

fn numeric_bound(n: &NumericBound, vector: &[f32]) -> (bool, String) {
    let value = match n.quantity {
        Quantity::EmbeddingNorm => norm(vector),
        Quantity::EmbeddingDimension => vector.len() as f64,
    };
    let passed =
        !value.is_nan() && n.min.is_none_or(|lo| value >= lo) && n.max.is_none_or(|hi| value <= hi);
    let show = |b: Option<f64>, open: &str| b.map_or(open.to_owned(), |x| format!("{x}"));
    (
        passed,
        format!(
            "{}={value:.6} {} [{}, {}]",
            n.quantity.as_str(),
            if passed { "within" } else { "outside" },
            show(n.min, "-inf"),
            show(n.max, "+inf")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model that maps known texts to fixed vectors.
    struct Fixed(BTreeMap<&'static str, Vec<f32>>, std::cell::Cell<usize>);

    impl Embed for Fixed {
        fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
            self.1.set(self.1.get() + texts.len());
            Ok(texts.iter().map(|t| self.0[t].clone()).collect())
        }
    }

    fn model() -> Fixed {
        Fixed(
            BTreeMap::from([
                ("food", vec![1.0, 0.0, 0.0]),
                ("pasta", vec![0.9, 0.1, 0.0]),
                ("drums", vec![0.0, 0.0, 1.0]),
                ("long", vec![3.0, 4.0, 0.0]),
            ]),
            std::cell::Cell::new(0),
        )
    }

    const SUITE: &str = r#"
apiVersion: lotabots.io/probes/v1alpha1
kind: ProbeSuite
task: embedding
probes:
  - name: order
    similarityOrder: {anchor: food, closer: pasta, farther: drums, margin: 0.5}
  - name: order-wrong
    similarityOrder: {anchor: food, closer: drums, farther: pasta}
  - name: margin-too-big
    similarityOrder: {anchor: food, closer: pasta, farther: drums, margin: 1.5}
  - name: least
    similarityAtLeast: {a: food, b: pasta, bound: 0.9}
  - name: least-fails
    similarityAtLeast: {a: food, b: drums, bound: 0.1}
  - name: most
    similarityAtMost: {a: food, b: drums, bound: 0.0}
  - name: most-fails
    similarityAtMost: {a: food, b: pasta, bound: 0.5}
  - name: norm
    numericBound: {input: long, quantity: embeddingNorm, min: 4.99, max: 5.01}
  - name: norm-fails
    numericBound: {input: long, quantity: embeddingNorm, max: 1.0}
  - name: dim
    numericBound: {input: food, quantity: embeddingDimension, min: 3, max: 3}
"#;

    #[test]
    fn each_property_passes_and_fails_with_detail() {
        let suite = Suite::parse(SUITE.as_bytes()).unwrap();
        let m = model();
        let out = evaluate_embedding(&suite, &m).unwrap();
        // Four distinct texts, each embedded once.
        assert_eq!(m.1.get(), 4);
        let got: Vec<(&str, bool)> = out.iter().map(|o| (o.name.as_str(), o.passed)).collect();
        assert_eq!(
            got,
            [
                ("order", true),
                ("order-wrong", false),
                ("margin-too-big", false),
                ("least", true),
                ("least-fails", false),
                ("most", true),
                ("most-fails", false),
                ("norm", true),
                ("norm-fails", false),
                ("dim", true),
            ]
        );
        let detail = |name: &str| {
            out.iter()
                .find(|o| o.name == name)
                .map(|o| o.detail.clone())
                .unwrap()
        };
        assert_eq!(
            detail("order"),
            "cos(anchor, closer)=0.9939 > cos(anchor, farther)=0.0000 + margin 0.5000"
        );
        assert_eq!(
            detail("order-wrong"),
            "cos(anchor, closer)=0.0000 is not > cos(anchor, farther)=0.9939"
        );
        assert_eq!(detail("least-fails"), "cos(a, b)=0.0000 is below 0.1000");
        assert_eq!(detail("most-fails"), "cos(a, b)=0.9939 is above 0.5000");
        assert_eq!(
            detail("norm-fails"),
            "embeddingNorm=5.000000 outside [-inf, 1]"
        );
        assert_eq!(detail("dim"), "embeddingDimension=3.000000 within [3, 3]");
    }

    #[test]
    fn cosine_and_norm() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-9);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
        assert!((cosine(&[2.0, 0.0], &[-3.0, 0.0]) + 1.0).abs() < 1e-12);
        assert_eq!(norm(&[3.0, 4.0]), 5.0);
    }
}
