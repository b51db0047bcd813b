//! The controller's Prometheus metrics, and the expiry of the certificates it keeps.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use lotabots_crds::gpu_attestation::Verdict;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

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
