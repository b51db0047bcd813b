//! GPU metrics for Prometheus, labelled the way NVIDIA's dcgm-exporter labels them
//! (`gpu`, `UUID`, `modelName`, `Hostname`; `GPU_I_PROFILE` and `GPU_I_ID` for MIG devices),
//! with names and units after Prometheus conventions.
//!
//! A fact that could not be measured is left out of the exposition rather than reported
//! as zero: an absent series is visible to alerting, a fake zero is not.

use lotabots_crds::evidence::{GpuEvidence, NodeEvidence};
use prometheus::{Encoder, GaugeVec, IntCounterVec, Opts, Registry, TextEncoder};

const GPU_LABELS: &[&str] = &["gpu", "UUID", "modelName", "Hostname"];

/// The agent's metrics, refreshed from each new evidence document.
pub struct GpuMetrics {
    registry: Registry,
    info: GaugeVec,
    temperature: GaugeVec,
    power: GaugeVec,
    power_limit: GaugeVec,
    memory_used: GaugeVec,
    memory_total: GaugeVec,
    ecc_enabled: GaugeVec,
    ecc_errors: GaugeVec,
    retired_pages: GaugeVec,
    remapped_rows: GaugeVec,
    mig_enabled: GaugeVec,
    mig_device: GaugeVec,
    unavailable: GaugeVec,
    probe_seconds: GaugeVec,
    probes: IntCounterVec,
    submissions: IntCounterVec,
}

fn gauge(registry: &Registry, name: &str, help: &str, extra: &[&str]) -> GaugeVec {
    let labels: Vec<&str> = GPU_LABELS.iter().chain(extra).copied().collect();
    let g = GaugeVec::new(Opts::new(name, help), &labels).expect("valid metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

impl Default for GpuMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl GpuMetrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let r = Registry::new();
        let probe_seconds = GaugeVec::new(
            Opts::new(
                "lotabots_agent_probe_duration_seconds",
                "Duration of the last GPU probe.",
            ),
            &["Hostname"],
        )
        .expect("valid metric definition");
        r.register(Box::new(probe_seconds.clone()))
            .expect("registered once");
        let probes = IntCounterVec::new(
            Opts::new(
                "lotabots_agent_probes_total",
                "GPU probes by result (ok, error).",
            ),
            &["result"],
        )
        .expect("valid metric definition");
        r.register(Box::new(probes.clone()))
            .expect("registered once");
        Self {
            info: gauge(
                &r,
                "lotabots_gpu_info",
                "GPU identity and firmware (always 1).",
                &["driver_version", "vbios_version"],
            ),
            temperature: gauge(
                &r,
                "lotabots_gpu_temperature_celsius",
                "GPU core temperature.",
                &[],
            ),
            power: gauge(&r, "lotabots_gpu_power_usage_watts", "GPU power draw.", &[]),
            power_limit: gauge(
                &r,
                "lotabots_gpu_power_limit_watts",
                "Enforced GPU power limit.",
                &[],
            ),
            memory_used: gauge(
                &r,
                "lotabots_gpu_memory_used_bytes",
                "Frame-buffer memory in use.",
                &[],
            ),
            memory_total: gauge(
                &r,
                "lotabots_gpu_memory_total_bytes",
                "Frame-buffer memory installed.",
                &[],
            ),
            ecc_enabled: gauge(
                &r,
                "lotabots_gpu_ecc_mode_enabled",
                "1 when ECC is on now.",
                &[],
            ),
            ecc_errors: gauge(
                &r,
                "lotabots_gpu_ecc_errors",
                "ECC error counts by error type (corrected, uncorrected) and counter (volatile, aggregate).",
                &["error_type", "counter"],
            ),
            retired_pages: gauge(
                &r,
                "lotabots_gpu_retired_pages",
                "Retired pages by cause (single_bit, double_bit).",
                &["cause"],
            ),
            remapped_rows: gauge(
                &r,
                "lotabots_gpu_remapped_rows",
                "Remapped rows by error type (correctable, uncorrectable).",
                &["error_type"],
            ),
            mig_enabled: gauge(
                &r,
                "lotabots_gpu_mig_mode_enabled",
                "1 when MIG is on now.",
                &[],
            ),
            mig_device: gauge(
                &r,
                "lotabots_gpu_mig_device_info",
                "A MIG device (compute instance), always 1.",
                &["GPU_I_PROFILE", "GPU_I_ID", "GPU_CI_ID", "mig_uuid"],
            ),
            unavailable: gauge(
                &r,
                "lotabots_gpu_fact_unavailable",
                "1 for each GPU fact that could not be read, by fact and NVML error class.",
                &["fact", "code"],
            ),
            probe_seconds,
            probes,
            submissions: {
                let c = IntCounterVec::new(
                    Opts::new(
                        "lotabots_agent_submissions_total",
                        "Evidence submissions to the operator by outcome.",
                    ),
                    &["outcome"],
                )
                .expect("valid metric definition");
                r.register(Box::new(c.clone()))
                    .expect("metric registered once");
                c
            },
            registry: r,
        }
    }

    /// Counts one evidence submission by outcome (`accepted` or the refusal's label).
    pub fn submission(&self, outcome: &str) {
        self.submissions.with_label_values(&[outcome]).inc();
    }

    /// Counts a failed probe (the previous values stay until the next success).
    pub fn probe_failed(&self) {
        self.probes.with_label_values(&["error"]).inc();
    }

    /// Replaces every GPU series with what `evidence` says.
    pub fn update(&self, evidence: &NodeEvidence, hostname: &str) {
        for g in [
            &self.info,
            &self.temperature,
            &self.power,
            &self.power_limit,
            &self.memory_used,
            &self.memory_total,
            &self.ecc_enabled,
            &self.ecc_errors,
            &self.retired_pages,
            &self.remapped_rows,
            &self.mig_enabled,
            &self.mig_device,
            &self.unavailable,
        ] {
            g.reset();
        }
        self.probes.with_label_values(&["ok"]).inc();
        self.probe_seconds
            .with_label_values(&[hostname])
            .set(evidence.collection_micros as f64 / 1e6);
        let driver = evidence
            .host
            .driver_version
            .value()
            .cloned()
            .unwrap_or_default();
        for gpu in &evidence.gpus {
            self.update_gpu(gpu, hostname, &driver);
        }
    }

    fn update_gpu(&self, gpu: &GpuEvidence, hostname: &str, driver: &str) {
        let index = gpu.index.to_string();
        let uuid = gpu.display_id();
        let model = gpu.product_name.value().cloned().unwrap_or_default();
        let base = [index.as_str(), uuid.as_str(), model.as_str(), hostname];
        let with = |extra: &[&str]| -> Vec<String> {
            base.iter().chain(extra).map(|s| s.to_string()).collect()
        };
        let set = |g: &GaugeVec, extra: &[&str], v: f64| {
            let labels = with(extra);
            let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
            g.with_label_values(&refs).set(v);
        };
        let vbios = gpu.vbios_version.value().cloned().unwrap_or_default();
        set(&self.info, &[driver, &vbios], 1.0);
        if let Some(t) = gpu.temperature_celsius.value() {
            set(&self.temperature, &[], f64::from(*t));
        }
        if let Some(p) = gpu.power_usage_milliwatts.value() {
            set(&self.power, &[], f64::from(*p) / 1000.0);
        }
        if let Some(p) = gpu.power_limit_milliwatts.value() {
            set(&self.power_limit, &[], f64::from(*p) / 1000.0);
        }
        if let Some(m) = gpu.memory.value() {
            set(&self.memory_used, &[], m.used_bytes as f64);
            set(&self.memory_total, &[], m.total_bytes as f64);
        }
        if let Some(m) = gpu.ecc_mode.value() {
            set(&self.ecc_enabled, &[], f64::from(u8::from(m.current)));
        }
        if let Some(e) = gpu.ecc_errors.value() {
            for (t, c, v) in [
                ("corrected", "volatile", e.volatile_corrected),
                ("uncorrected", "volatile", e.volatile_uncorrected),
                ("corrected", "aggregate", e.aggregate_corrected),
                ("uncorrected", "aggregate", e.aggregate_uncorrected),
            ] {
                set(&self.ecc_errors, &[t, c], v as f64);
            }
        }
        if let Some(r) = gpu.retired_pages.value() {
            set(
                &self.retired_pages,
                &["single_bit"],
                f64::from(r.single_bit_ecc),
            );
            set(
                &self.retired_pages,
                &["double_bit"],
                f64::from(r.double_bit_ecc),
            );
        }
        if let Some(r) = gpu.remapped_rows.value() {
            set(
                &self.remapped_rows,
                &["correctable"],
                f64::from(r.correctable),
            );
            set(
                &self.remapped_rows,
                &["uncorrectable"],
                f64::from(r.uncorrectable),
            );
        }
        if let Some(m) = gpu.mig.mode.value() {
            set(&self.mig_enabled, &[], f64::from(u8::from(m.current)));
        }
        for gi in gpu.mig.gpu_instances.value().into_iter().flatten() {
            for ci in &gi.compute_instances {
                let mig_uuid = ci.mig_device_uuid.value().cloned().unwrap_or_default();
                let (gi_id, ci_id) = (gi.id.to_string(), ci.id.to_string());
                set(
                    &self.mig_device,
                    &[&gi.profile_name, &gi_id, &ci_id, &mig_uuid],
                    1.0,
                );
            }
        }
        for (name, code) in unavailable_facts(gpu) {
            set(&self.unavailable, &[name, code], 1.0);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail for valid metrics");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// The facts of a GPU that could not be read, with their error classes.
fn unavailable_facts(gpu: &GpuEvidence) -> Vec<(&'static str, &'static str)> {
    let code = |u: Option<&lotabots_crds::evidence::Unavailable>| u.map(|u| code_name(u.code));
    [
        ("uuid", code(gpu.uuid.unavailable())),
        ("temperature", code(gpu.temperature_celsius.unavailable())),
        (
            "power_usage",
            code(gpu.power_usage_milliwatts.unavailable()),
        ),
        ("memory", code(gpu.memory.unavailable())),
        ("ecc_mode", code(gpu.ecc_mode.unavailable())),
        ("ecc_errors", code(gpu.ecc_errors.unavailable())),
        ("retired_pages", code(gpu.retired_pages.unavailable())),
        ("remapped_rows", code(gpu.remapped_rows.unavailable())),
        ("mig_mode", code(gpu.mig.mode.unavailable())),
    ]
    .into_iter()
    .filter_map(|(n, c)| c.map(|c| (n, c)))
    .collect()
}

fn code_name(c: lotabots_crds::evidence::ErrorCode) -> &'static str {
    use lotabots_crds::evidence::ErrorCode::*;
    match c {
        NotSupported => "NotSupported",
        NoPermission => "NoPermission",
        GpuLost => "GpuLost",
        FunctionNotFound => "FunctionNotFound",
        NotFound => "NotFound",
        Timeout => "Timeout",
        InvalidArgument => "InvalidArgument",
        Unknown => "Unknown",
    }
}

/// This machine's host name, for the `Hostname` label when no node name is given.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{ProbeRequest, collect};
    use crate::simulated::SimulatedBackend;

    fn rendered(profile: &str) -> String {
        let b = SimulatedBackend::load(profile).unwrap();
        let e = collect(&b, &ProbeRequest::local("node-1")).unwrap();
        let m = GpuMetrics::new();
        m.update(&e, "node-1");
        m.render()
    }

    #[test]
    fn h100_series_carry_dcgm_labels_and_units() {
        let text = rendered("h100-80gb-hbm3");
        let labels = r#"Hostname="node-1",UUID="GPU-38615fa5-f37e-2156-0ec9-5e05fd617e42",gpu="0",modelName="NVIDIA H100 80GB HBM3""#;
        assert!(
            text.contains(&format!("lotabots_gpu_temperature_celsius{{{labels}}} 38")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "lotabots_gpu_power_usage_watts{{{labels}}} 103.718"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "lotabots_gpu_memory_total_bytes{{{labels}}} 85520809984"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("lotabots_gpu_mig_mode_enabled{{{labels}}} 0")),
            "{text}"
        );
        // Hopper has no retired pages: no fake zero, but an "unavailable" series instead.
        assert!(!text.contains("lotabots_gpu_retired_pages{"), "{text}");
        assert!(
            text.contains(r#"code="NotSupported",fact="retired_pages""#),
            "{text}"
        );
    }

    #[test]
    fn mig_devices_carry_instance_labels() {
        let text = rendered("a100-80gb-mig");
        assert!(
            text.contains(r#"GPU_CI_ID="0",GPU_I_ID="2",GPU_I_PROFILE="3g.40gb""#),
            "{text}"
        );
        assert_eq!(
            text.matches("lotabots_gpu_mig_device_info{").count(),
            5,
            "{text}"
        );
    }

    #[test]
    fn faulty_gpu_shows_its_faults() {
        let text = rendered("faulty-node");
        assert!(
            text.contains(r#"cause="double_bit",gpu="1",modelName="Tesla V100-SXM2-32GB"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"code="NotSupported",fact="ecc_errors",gpu="1""#),
            "{text}"
        );
    }
}
