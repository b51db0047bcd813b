//! `--format table`: the result for a person, with each device's figures set against the
//! card's published peaks where the card is known.

use std::fmt::Write as _;

use lotabots_crds::workload::{DeviceSelfTest, WorkloadResult};

use crate::gpu::format_version;

/// A card's published peaks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Published {
    /// What the figures are for.
    pub card: &'static str,
    /// Dense FP32 (non-tensor) TFLOP/s.
    pub fp32_tflops: f64,
    /// Memory bandwidth, TB/s.
    pub memory_tbps: f64,
}

/// NVIDIA's datasheet figures for the cards the self-test is run on.
pub const PUBLISHED: [Published; 3] = [
    Published {
        card: "H100 SXM (HBM3)",
        fp32_tflops: 67.0,
        memory_tbps: 3.35,
    },
    Published {
        card: "H100 PCIe (HBM2e)",
        fp32_tflops: 51.0,
        memory_tbps: 2.0,
    },
    Published {
        card: "H200 SXM (HBM3e)",
        fp32_tflops: 67.0,
        memory_tbps: 4.8,
    },
];

/// The published figures for a device by its driver name (`NVIDIA H100 80GB HBM3`).
pub fn published_for(name: &str) -> Option<Published> {
    let n = name.to_ascii_uppercase();
    if n.contains("H100") && n.contains("PCIE") {
        Some(PUBLISHED[1])
    } else if n.contains("H100") && (n.contains("HBM3") || n.contains("SXM")) {
        Some(PUBLISHED[0])
    } else if n.contains("H200") && !n.contains("NVL") {
        Some(PUBLISHED[2])
    } else {
        None
    }
}

/// The result as a table.
pub fn render(result: &WorkloadResult) -> String {
    let mut out = String::new();
    let verdict = if result.passed { "PASSED" } else { "FAILED" };
    let _ = writeln!(
        out,
        "lotabots GPU self-test: {verdict}  node {}  nonce {}…",
        result.node,
        &result.nonce[..result.nonce.len().min(16)]
    );
    if let Some(e) = &result.error {
        let _ = writeln!(out, "error: {e}");
    }
    let Some(report) = &result.self_test else {
        return out;
    };
    if report.simulated {
        let _ = writeln!(out, "SIMULATED on the CPU: no GPU was used");
    }
    if let Some(v) = report.driver_version {
        let _ = writeln!(out, "CUDA driver {}", format_version(v));
    }
    let _ = writeln!(
        out,
        "{:>3}  {:<26} {:>6} {:>10} {:>10} {:>10}  {:>10} {:>8}  {:>9}",
        "#", "device", "n", "max err", "tolerance", "GFLOP/s", "mem GiB", "errors", "D2D GB/s"
    );
    for d in &report.devices {
        let _ = writeln!(
            out,
            "{:>3}  {:<26} {:>6} {:>10.3e} {:>10.3e} {:>10.1}  {:>10.2} {:>8}  {:>9.1}  {}",
            d.ordinal,
            truncate(&d.name, 26),
            d.matmul.n,
            d.matmul.max_abs_error,
            d.matmul.tolerance,
            d.matmul.gflops,
            d.memory.bytes_tested as f64 / f64::from(1u32 << 30),
            d.memory.errors,
            d.bandwidth.gbps,
            checks(d),
        );
    }
    for d in &report.devices {
        if let Some(p) = published_for(&d.name) {
            let _ = writeln!(out, "{}", comparison(d, p));
        }
    }
    out
}

fn checks(d: &DeviceSelfTest) -> String {
    let mark = |ok| if ok { "ok" } else { "FAIL" };
    format!(
        "matmul {} memory {}",
        mark(d.matmul.passed),
        mark(d.memory.passed)
    )
}

/// One device against its card's published peaks. A device-to-device copy reads and
/// writes every byte, so it moves twice the bytes it reports: that doubled figure is what
/// compares with the memory bandwidth. The product is a plain tiled kernel, not cuBLAS:
/// it proves correct arithmetic and shows the order of magnitude, not the peak.
pub fn comparison(d: &DeviceSelfTest, p: Published) -> String {
    let moved = 2.0 * d.bandwidth.gbps;
    format!(
        "device {} vs published {}: FP32 {:.1} of {:.0} TFLOP/s ({:.0}%, tiled kernel, not \
         cuBLAS); copy moves {:.0} of {:.0} GB/s ({:.0}% of HBM, read + write)",
        d.ordinal,
        p.card,
        d.matmul.gflops / 1e3,
        p.fp32_tflops,
        100.0 * d.matmul.gflops / (p.fp32_tflops * 1e3),
        moved,
        p.memory_tbps * 1e3,
        100.0 * moved / (p.memory_tbps * 1e3),
    )
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        s.chars().take(max - 1).chain(['…']).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lotabots_crds::workload::{BandwidthCheck, MatmulCheck, MemoryCheck};

    fn device(name: &str) -> DeviceSelfTest {
        DeviceSelfTest {
            ordinal: 0,
            uuid: "GPU-0".into(),
            name: name.into(),
            matmul: MatmulCheck {
                n: 1024,
                max_abs_error: 1e-4,
                tolerance: 7.8e-3,
                gflops: 13_400.0,
                passed: true,
            },
            memory: MemoryCheck {
                bytes_tested: 20 << 30,
                share: 0.25,
                errors: 0,
                passed: true,
            },
            bandwidth: BandwidthCheck {
                bytes: 1 << 30,
                gbps: 1340.0,
            },
        }
    }

    #[test]
    fn cards_are_recognised_by_driver_name() {
        assert_eq!(published_for("NVIDIA H100 80GB HBM3"), Some(PUBLISHED[0]));
        assert_eq!(published_for("NVIDIA H100 PCIe"), Some(PUBLISHED[1]));
        assert_eq!(published_for("NVIDIA H200"), Some(PUBLISHED[2]));
        assert_eq!(published_for("NVIDIA H200 NVL"), None);
        assert_eq!(published_for("NVIDIA A100-SXM4-80GB"), None);
    }

    #[test]
    fn comparison_doubles_copy_bytes_against_hbm() {
        let line = comparison(&device("NVIDIA H100 80GB HBM3"), PUBLISHED[0]);
        assert!(line.contains("FP32 13.4 of 67 TFLOP/s (20%"), "{line}");
        assert!(
            line.contains("copy moves 2680 of 3350 GB/s (80% of HBM"),
            "{line}"
        );
    }

    #[test]
    fn table_shows_verdict_figures_and_published_peaks() {
        let result = WorkloadResult {
            schema_version: "v".into(),
            request_id: "r".into(),
            kind: lotabots_crds::workload::WorkloadKind::GpuSelfTest,
            nonce: "ab".repeat(32),
            node: "gpu-1".into(),
            started_at: jiff::Timestamp::UNIX_EPOCH,
            finished_at: jiff::Timestamp::UNIX_EPOCH,
            passed: true,
            error: None,
            self_test: Some(lotabots_crds::workload::SelfTestReport {
                simulated: false,
                driver_version: Some(12080),
                devices: vec![device("NVIDIA H100 80GB HBM3")],
            }),
            probes: None,
        };
        let t = render(&result);
        assert!(
            t.starts_with("lotabots GPU self-test: PASSED  node gpu-1"),
            "{t}"
        );
        assert!(t.contains("CUDA driver 12.8"), "{t}");
        assert!(t.contains("13400.0"), "{t}");
        assert!(t.contains("matmul ok memory ok"), "{t}");
        assert!(t.contains("vs published H100 SXM (HBM3)"), "{t}");
        assert!(!t.contains("SIMULATED"), "{t}");
    }

    #[test]
    fn long_names_are_cut() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
