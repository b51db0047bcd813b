//! The outbox's Prometheus metrics.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

/// The metrics, registered in the registry the worker is given. Names are fixed: the
/// alerts in the Helm chart use them.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// `lotabots_store_uploads_total{store,outcome}`, outcome `stored`,
    /// `already_present` or `failed`.
    pub uploads: IntCounterVec,
    /// `lotabots_store_breaker_open{store}`: 1 while the store's breaker is open or
    /// half-open.
    pub breaker_open: IntGaugeVec,
    /// `lotabots_store_outbox_pending{store}`: copies the store does not have yet.
    pub pending: IntGaugeVec,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let uploads = IntCounterVec::new(
            Opts::new(
                "lotabots_store_uploads_total",
                "Evidence bundle uploads by store and outcome (stored, already_present, failed).",
            ),
            &["store", "outcome"],
        )?;
        let breaker_open = IntGaugeVec::new(
            Opts::new(
                "lotabots_store_breaker_open",
                "1 while the store's circuit breaker is open (uploads paused), else 0.",
            ),
            &["store"],
        )?;
        let pending = IntGaugeVec::new(
            Opts::new(
                "lotabots_store_outbox_pending",
                "Evidence bundle copies the store does not have yet.",
            ),
            &["store"],
        )?;
        registry.register(Box::new(uploads.clone()))?;
        registry.register(Box::new(breaker_open.clone()))?;
        registry.register(Box::new(pending.clone()))?;
        Ok(Self {
            uploads,
            breaker_open,
            pending,
        })
    }
}
