//! Prometheus metrics, registered in a registry of their own (not the global one) so that
//! tests can build as many servers as they like.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::admission::Reviewed;

/// The webhook's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Admission requests by kind, operation and decision.
    pub requests: IntCounterVec,
    /// Violations by rule and mode (`audit` is how audit mode is counted).
    pub violations: IntCounterVec,
    /// Requests that could not be answered (bad body, too large), by reason.
    pub request_errors: IntCounterVec,
    /// Time to decide one request.
    pub duration: HistogramVec,
    /// Policy and certificate reloads by what and result.
    pub reloads: IntCounterVec,
    /// 1 while the policy in force is the one in the file; 0 while the file is invalid and
    /// the last good policy is kept.
    pub policy_current: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "lotabots_webhook_admission_requests_total",
                "Admission requests answered, by kind, operation and decision",
            ),
            &["kind", "operation", "decision", "dry_run"],
        )
        .expect("valid metric");
        let violations = IntCounterVec::new(
            Opts::new(
                "lotabots_webhook_policy_violations_total",
                "Policy violations found, by rule and mode",
            ),
            &["rule", "mode", "dry_run"],
        )
        .expect("valid metric");
        let request_errors = IntCounterVec::new(
            Opts::new(
                "lotabots_webhook_request_errors_total",
                "Requests answered with an HTTP error, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "lotabots_webhook_review_duration_seconds",
                "Time to decode, evaluate and encode one AdmissionReview",
            )
            .buckets(vec![
                0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1,
            ]),
            &["kind"],
        )
        .expect("valid metric");
        let reloads = IntCounterVec::new(
            Opts::new(
                "lotabots_webhook_reloads_total",
                "Reloads of the policy and the TLS certificate, by what and result",
            ),
            &["what", "result"],
        )
        .expect("valid metric");
        let policy_current = IntGauge::new(
            "lotabots_webhook_policy_current",
            "1 when the policy in force is the one in the file, 0 when the file is invalid",
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(violations.clone()),
            Box::new(request_errors.clone()),
            Box::new(duration.clone()),
            Box::new(reloads.clone()),
            Box::new(policy_current.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            registry,
            requests,
            violations,
            request_errors,
            duration,
            reloads,
            policy_current,
        }
    }

    /// Counts one answered request.
    pub fn record(&self, r: &Reviewed, seconds: f64) {
        let dry = if r.dry_run { "true" } else { "false" };
        let op = match r.operation {
            crate::admission::Operation::Create => "CREATE",
            crate::admission::Operation::Update => "UPDATE",
            crate::admission::Operation::Delete => "DELETE",
            crate::admission::Operation::Connect => "CONNECT",
        };
        self.requests
            .with_label_values(&[r.kind_label, op, r.verdict.decision().as_str(), dry])
            .inc();
        for v in &r.verdict.violations {
            self.violations
                .with_label_values(&[v.rule.as_str(), v.mode.as_str(), dry])
                .inc();
        }
        self.duration
            .with_label_values(&[r.kind_label])
            .observe(seconds);
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("text format is UTF-8")
    }
}
