//! The controller's Prometheus metrics, and the expiry of the certificates it keeps.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use lotabots_crds::gpu_attestation::Verdict;
use lotabots_model::attest::StageStatus;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

use crate::model_status::Outcome;
use crate::status::NodeResult;

/// Reconciles, their errors and durations, and nodes by verdict.
#[derive(Clone)]
pub struct ControllerMetrics {
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    nodes: IntGaugeVec,
}

const VERDICTS: [Verdict; 3] = [Verdict::Attested, Verdict::Failed, Verdict::Unknown];

impl ControllerMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let reconciles = IntCounterVec::new(
            Opts::new(
                "lotabots_reconciles_total",
                "GpuAttestation reconciles by result",
            ),
            &["result"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "lotabots_reconcile_errors_total",
                "Failed reconciles by error category",
            ),
            &["category"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "lotabots_reconcile_duration_seconds",
                "Time spent in one reconcile",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            &["result"],
        )?;
        let nodes = IntGaugeVec::new(
            Opts::new(
                "lotabots_gpu_nodes",
                "Nodes a GpuAttestation selects, by verdict",
            ),
            &["attestation", "verdict"],
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(nodes.clone()))?;
        Ok(Self {
            reconciles,
            errors,
            duration,
            nodes,
        })
    }

    /// Counts one reconcile.
    pub fn observe_reconcile(&self, result: &str, took: Duration) {
        self.reconciles.with_label_values(&[result]).inc();
        self.duration
            .with_label_values(&[result])
            .observe(took.as_secs_f64());
    }

    /// Counts one failed reconcile by category.
    pub fn count_error(&self, category: &str) {
        self.errors.with_label_values(&[category]).inc();
    }

    /// Sets the node counts of one GpuAttestation.
    pub fn set_nodes(&self, attestation: &str, results: &[NodeResult]) {
        for v in VERDICTS {
            let n = results.iter().filter(|r| r.verdict == v).count();
            self.nodes
                .with_label_values(&[attestation, v.as_str()])
                .set(n as i64);
        }
    }

    /// Drops the series of a deleted GpuAttestation.
    pub fn forget(&self, attestation: &str) {
        for v in VERDICTS {
            let _ = self.nodes.remove_label_values(&[attestation, v.as_str()]);
        }
    }
}

/// The ModelAttestation controller's judgements: verdicts, each stage's outcome and
/// duration, and the bytes hashed (a model is read whole on every judgement, so this is
/// the controller's I/O).
#[derive(Clone)]
pub struct ModelMetrics {
    verdicts: IntCounterVec,
    stages: IntCounterVec,
    stage_duration: HistogramVec,
    bytes_hashed: IntCounter,
}

impl ModelMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let verdicts = IntCounterVec::new(
            Opts::new(
                "lotabots_model_attestations_total",
                "ModelAttestation judgements by verdict (Unknown: the model could not be judged)",
            ),
            &["verdict"],
        )?;
        let stages = IntCounterVec::new(
            Opts::new(
                "lotabots_model_stage_results_total",
                "ModelAttestation stage outcomes (passed, failed, skipped, blocked) by stage",
            ),
            &["stage", "outcome"],
        )?;
        let stage_duration = HistogramVec::new(
            HistogramOpts::new(
                "lotabots_model_stage_duration_seconds",
                "Time one stage took (SafetyScanned includes the compliance rules judged on its scan)",
            )
            .buckets(vec![
                0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1200.0, 3600.0,
            ]),
            &["stage"],
        )?;
        let bytes_hashed = IntCounter::new(
            "lotabots_model_bytes_hashed_total",
            "Bytes of model files read and hashed",
        )?;
        registry.register(Box::new(verdicts.clone()))?;
        registry.register(Box::new(stages.clone()))?;
        registry.register(Box::new(stage_duration.clone()))?;
        registry.register(Box::new(bytes_hashed.clone()))?;
        Ok(Self {
            verdicts,
            stages,
            stage_duration,
            bytes_hashed,
        })
    }

    /// Bytes hashed so far.
    pub fn bytes_hashed(&self) -> u64 {
        self.bytes_hashed.get()
    }

    /// Counts one judgement.
    pub fn observe(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Judged(report) => {
                self.verdicts
                    .with_label_values(&[report.verdict.as_str()])
                    .inc();
                for s in &report.stages {
                    let status = match s.status {
                        StageStatus::Passed => "passed",
                        StageStatus::Failed => "failed",
                        StageStatus::Skipped => "skipped",
                    };
                    self.stages.with_label_values(&[s.stage, status]).inc();
                    if let Some(took) = s.took {
                        self.stage_duration
                            .with_label_values(&[s.stage])
                            .observe(took.as_secs_f64());
                    }
                }
                self.bytes_hashed.inc_by(report.bytes_hashed);
            }
            Outcome::Blocked(b) => {
                self.verdicts.with_label_values(&[b.verdict.as_str()]).inc();
                if let Some(stage) = b.stage {
                    self.stages.with_label_values(&[stage, "blocked"]).inc();
                }
            }
        }
    }
}

/// When each certificate the operator keeps (`--manage-certificates`) expires, so that
/// an alert can fire well before a renewal that keeps failing lets one lapse.
#[derive(Clone)]
pub struct CertificateMetrics {
    expiry: IntGaugeVec,
}

impl CertificateMetrics {
    /// Registers `lotabots_certificate_expiry_timestamp_seconds{secret}` in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let expiry = IntGaugeVec::new(
            Opts::new(
                "lotabots_certificate_expiry_timestamp_seconds",
                "When the certificate in the Secret expires (Unix time), as last issued or found valid",
            ),
            &["secret"],
        )?;
        registry.register(Box::new(expiry.clone()))?;
        Ok(Self { expiry })
    }

    /// Records the expiries of one certificate round (`certs::Round::expiries`).
    pub fn observe(&self, expiries: &BTreeMap<String, Timestamp>) {
        for (secret, at) in expiries {
            self.expiry.with_label_values(&[secret]).set(at.as_second());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the series of `name` with exactly these labels (a histogram's
    /// sample count), 0 when there is none.
    fn value(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
        let families = registry.gather();
        let found = families
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().iter())
            .find(|m| {
                m.get_label().len() == labels.len()
                    && labels.iter().all(|(k, v)| {
                        m.get_label()
                            .iter()
                            .any(|l| l.name() == *k && l.value() == *v)
                    })
            });
        // A counter's histogram part is empty, and the reverse.
        found.map_or(0.0, |m| {
            m.get_histogram().get_sample_count() as f64 + m.get_counter().get_value()
        })
    }

    #[test]
    fn model_judgements_move_the_model_metrics() {
        use lotabots_crds::model_attestation::Verdict as ModelVerdict;
        use lotabots_model::attest::{REPORT_SCHEMA, Report, StageResult};

        let registry = Registry::new();
        let metrics = ModelMetrics::register(&registry).unwrap();
        let mut hashed = StageResult::new(
            "IntegrityVerified",
            StageStatus::Failed,
            "DigestMismatch",
            "one file differs",
        );
        hashed.took = Some(Duration::from_millis(1500));
        let report = Report {
            schema_version: REPORT_SCHEMA,
            model: "s3://models/m".into(),
            verdict: ModelVerdict::Failed,
            manifest_digest: None,
            serialization: None,
            files: 1,
            signer: None,
            checked_at: Timestamp::UNIX_EPOCH,
            stages: vec![
                hashed,
                StageResult::new(
                    "SignatureVerified",
                    StageStatus::Skipped,
                    "NotRequested",
                    "",
                ),
            ],
            bytes_hashed: 4096,
        };
        metrics.observe(&Outcome::Judged(report.clone()));
        metrics.observe(&Outcome::Judged(report));
        metrics.observe(&Outcome::Blocked(crate::model_status::Blocked::unknown(
            "IntegrityVerified",
            "SourceUnavailable",
            "s3://models/m: no object under this prefix",
        )));
        let v = |name, labels: &[(&str, &str)]| value(&registry, name, labels);
        let stage = |stage, outcome| [("stage", stage), ("outcome", outcome)];
        assert_eq!(
            v(
                "lotabots_model_attestations_total",
                &[("verdict", "Failed")]
            ),
            2.0
        );
        assert_eq!(
            v(
                "lotabots_model_attestations_total",
                &[("verdict", "Unknown")]
            ),
            1.0
        );
        assert_eq!(
            v(
                "lotabots_model_stage_results_total",
                &stage("IntegrityVerified", "failed")
            ),
            2.0
        );
        assert_eq!(
            v(
                "lotabots_model_stage_results_total",
                &stage("IntegrityVerified", "blocked")
            ),
            1.0
        );
        assert_eq!(
            v(
                "lotabots_model_stage_results_total",
                &stage("SignatureVerified", "skipped")
            ),
            2.0
        );
        assert_eq!(
            v(
                "lotabots_model_stage_duration_seconds",
                &[("stage", "IntegrityVerified")]
            ),
            2.0,
            "only stages that ran are timed"
        );
        assert_eq!(
            v(
                "lotabots_model_stage_duration_seconds",
                &[("stage", "SignatureVerified")]
            ),
            0.0
        );
        assert_eq!(v("lotabots_model_bytes_hashed_total", &[]), 8192.0);
    }

    fn expiry_series(registry: &Registry) -> BTreeMap<String, f64> {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == "lotabots_certificate_expiry_timestamp_seconds")
            .flat_map(|f| f.get_metric().iter())
            .map(|m| {
                (
                    m.get_label()[0].value().to_owned(),
                    m.get_gauge().get_value(),
                )
            })
            .collect()
    }

    #[test]
    fn certificate_expiries_are_exported_by_secret_and_follow_renewals() {
        let registry = Registry::new();
        let metrics = CertificateMetrics::register(&registry).unwrap();
        assert!(
            expiry_series(&registry).is_empty(),
            "no series before a round"
        );
        let at = |s| Timestamp::from_second(s).unwrap();
        metrics.observe(
            &[
                ("lotabots-ca".to_owned(), at(2_100_000_000)),
                ("lotabots-webhook-tls".to_owned(), at(1_807_776_000)),
            ]
            .into(),
        );
        // A renewal moves the webhook's expiry; the CA's stays.
        metrics.observe(&[("lotabots-webhook-tls".to_owned(), at(1_815_552_000))].into());
        assert_eq!(
            expiry_series(&registry),
            [
                ("lotabots-ca".to_owned(), 2_100_000_000.0),
                ("lotabots-webhook-tls".to_owned(), 1_815_552_000.0),
            ]
            .into()
        );
    }
}
