//! The controller's Prometheus metrics.

use std::time::Duration;

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
