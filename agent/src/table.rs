//! The `--format table` view of evidence: one block per GPU, unavailable facts shown with
//! their reason class.

use std::fmt::{Display, Write};

use lotabots_crds::evidence::{Fact, NodeEvidence};

fn show<T: Display>(f: &Fact<T>) -> String {
    match f {
        Fact::Value(v) => v.to_string(),
        Fact::Unavailable(u) => format!("n/a ({:?})", u.code),
    }
}

fn show_with<T>(f: &Fact<T>, g: impl FnOnce(&T) -> String) -> String {
    match f {
        Fact::Value(v) => g(v),
        Fact::Unavailable(u) => format!("n/a ({:?})", u.code),
    }
}

fn on(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

/// Renders the evidence for people.
pub fn render(e: &NodeEvidence) -> String {
    let mut s = String::new();
    let backend = match &e.backend.profile {
        Some(p) => format!("{:?} ({p})", e.backend.kind),
        None => format!("{:?}", e.backend.kind),
    };
    let _ = writeln!(s, "backend      {backend}");
    if !e.node_name.is_empty() {
        let _ = writeln!(s, "node         {}", e.node_name);
    }
    let _ = writeln!(
        s,
        "driver       {}   CUDA {}   NVML {}",
        show(&e.host.driver_version),
        show(&e.host.cuda_driver_version),
        show(&e.host.nvml_version)
    );
    let _ = writeln!(
        s,
        "CC           {}",
        show_with(&e.host.confidential_computing, |c| format!(
            "{}{}",
            on(c.enabled),
            if c.dev_tools_mode {
                " (dev tools mode)"
            } else {
                ""
            }
        ))
    );
    let _ = writeln!(s, "nonce        {} ({:?})", e.nonce, e.nonce_origin);
    let _ = writeln!(
        s,
        "collected    {} in {} µs",
        e.collected_at, e.collection_micros
    );
    for g in &e.gpus {
        let _ = writeln!(s, "\nGPU {}  {}", g.index, show(&g.uuid));
        let rows = [
            ("product", show(&g.product_name)),
            ("serial", show(&g.serial)),
            ("VBIOS", show(&g.vbios_version)),
            ("InfoROM", show(&g.inforom_image_version)),
            ("PCI", show_with(&g.pci, |p| p.bus_id.clone())),
            ("ECC", show_with(&g.ecc_mode, |m| on(m.current).to_owned())),
            (
                "ECC errors",
                show_with(&g.ecc_errors, |c| {
                    format!(
                        "volatile {}/{} aggregate {}/{} (corrected/uncorrected)",
                        c.volatile_corrected,
                        c.volatile_uncorrected,
                        c.aggregate_corrected,
                        c.aggregate_uncorrected
                    )
                }),
            ),
            (
                "retired pages",
                show_with(&g.retired_pages, |r| {
                    format!(
                        "single-bit {} double-bit {}{}",
                        r.single_bit_ecc,
                        r.double_bit_ecc,
                        if r.pending { " (pending)" } else { "" }
                    )
                }),
            ),
            (
                "remapped rows",
                show_with(&g.remapped_rows, |r| {
                    format!(
                        "correctable {} uncorrectable {}{}{}",
                        r.correctable,
                        r.uncorrectable,
                        if r.pending { " (pending)" } else { "" },
                        if r.failure_occurred { " (FAILURE)" } else { "" }
                    )
                }),
            ),
            (
                "temperature",
                show_with(&g.temperature_celsius, |t| format!("{t} °C")),
            ),
            (
                "power",
                show_with(&g.power_usage_milliwatts, |p| {
                    format!("{:.1} W", f64::from(*p) / 1000.0)
                }),
            ),
            (
                "memory",
                show_with(&g.memory, |m| {
                    format!(
                        "{} MiB used of {} MiB",
                        m.used_bytes >> 20,
                        m.total_bytes >> 20
                    )
                }),
            ),
            (
                "MIG",
                show_with(&g.mig.mode, |m| {
                    format!("{} (pending {})", on(m.current), on(m.pending))
                }),
            ),
            (
                "MIG profiles",
                show_with(&g.mig.gpu_instance_profiles, |p| {
                    p.iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }),
            ),
            (
                "CC report",
                show_with(&g.confidential_computing.attestation_report, |r| {
                    format!("{} bytes", r.report.len() / 2)
                }),
            ),
        ];
        for (k, v) in rows {
            let _ = writeln!(s, "  {k:<14} {v}");
        }
        for gi in g.mig.gpu_instances.value().into_iter().flatten() {
            let _ = writeln!(
                s,
                "  GI {:<3} {:<11} slices {}+{}",
                gi.id, gi.profile_name, gi.placement_start, gi.placement_size
            );
            for ci in &gi.compute_instances {
                let _ = writeln!(s, "    CI {:<3} {}", ci.id, show(&ci.mig_device_uuid));
            }
        }
    }
    s
}
