//! The simulated `h100-80gb-hbm3` profile must report what the real H100 reported, field
//! for field, errors included (tests/fixtures/h100-80gb-hbm3/, copied from the shared
//! ground truth).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lotabots_agent::backend::{ProbeRequest, collect};
use lotabots_agent::simulated::SimulatedBackend;
use lotabots_crds::evidence::{ErrorCode, Fact, GpuEvidence, NodeEvidence};
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/h100-80gb-hbm3")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(fixture_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn evidence() -> NodeEvidence {
    let b = SimulatedBackend::load("h100-80gb-hbm3").unwrap();
    collect(&b, &ProbeRequest::local("")).unwrap()
}

/// `Ok("x")` / `Ok(13000)` → the inside; `"\"x\""` → `x`.
fn unwrap_text(s: &str) -> String {
    let s = s
        .strip_prefix("Ok(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or(s);
    s.trim_matches('"').to_owned()
}

/// The value of `name: value` inside a Rust `Debug` struct string.
fn debug_field(s: &str, name: &str) -> String {
    let start = s
        .find(&format!("{name}: "))
        .unwrap_or_else(|| panic!("{name} missing from {s}"))
        + name.len()
        + 2;
    let rest = &s[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().to_owned()
}

fn value<T: Clone + std::fmt::Debug>(f: &Fact<T>, what: &str) -> T {
    f.value()
        .cloned()
        .unwrap_or_else(|| panic!("{what} should be measured, got {f:?}"))
}

fn assert_unavailable<T: std::fmt::Debug>(f: &Fact<T>, code: ErrorCode, what: &str) {
    let u = f
        .unavailable()
        .unwrap_or_else(|| panic!("{what} should be unavailable, got {f:?}"));
    assert_eq!(u.code, code, "{what}");
}

/// Compares every field of one fixture device; fails on a fixture field it does not know.
fn check_device(gpu: &GpuEvidence, host_cc: (bool, bool), dev: &BTreeMap<String, Value>) {
    let text = |k: &str| unwrap_text(dev[k].as_str().unwrap_or_else(|| panic!("{k} is not text")));
    let num = |k: &str| {
        text(k)
            .parse::<u64>()
            .unwrap_or_else(|e| panic!("{k}: {e}"))
    };
    let mut seen = vec!["timing_us"]; // timings describe the capture, not the GPU

    let mut eq = |k: &'static str, ours: String, theirs: String| {
        assert_eq!(ours, theirs, "field {k}");
        seen.push(k);
    };
    eq("uuid", value(&gpu.uuid, "uuid"), text("uuid"));
    eq("serial", value(&gpu.serial, "serial"), text("serial"));
    eq("name", value(&gpu.product_name, "name"), text("name"));
    eq("brand", value(&gpu.brand, "brand"), text("brand"));
    eq(
        "architecture",
        value(&gpu.architecture, "architecture"),
        text("architecture"),
    );
    eq(
        "board_part_number",
        value(&gpu.board_part_number, "bpn"),
        text("board_part_number"),
    );
    eq(
        "vbios_version",
        value(&gpu.vbios_version, "vbios"),
        text("vbios_version"),
    );
    eq(
        "gsp_firmware_version",
        value(&gpu.gsp_firmware_version, "gsp"),
        text("gsp_firmware_version"),
    );
    eq(
        "compute_mode",
        value(&gpu.compute_mode, "compute mode"),
        text("compute_mode"),
    );
    eq(
        "temperature_gpu",
        value(&gpu.temperature_celsius, "temp").to_string(),
        text("temperature_gpu"),
    );
    eq(
        "power_usage_mw",
        value(&gpu.power_usage_milliwatts, "power").to_string(),
        text("power_usage_mw"),
    );
    eq(
        "enforced_power_limit_mw",
        value(&gpu.power_limit_milliwatts, "limit").to_string(),
        text("enforced_power_limit_mw"),
    );
    eq(
        "running_compute_processes_count",
        value(&gpu.running_compute_processes, "procs").to_string(),
        text("running_compute_processes_count"),
    );
    let cc = text("cuda_compute_capability");
    eq(
        "cuda_compute_capability",
        value(&gpu.cuda_compute_capability, "cc"),
        format!(
            "{}.{}",
            debug_field(&cc, "major"),
            debug_field(&cc, "minor")
        ),
    );
    let gsp = text("gsp_firmware_mode");
    let mode = value(&gpu.gsp_firmware_mode, "gsp mode");
    eq(
        "gsp_firmware_mode",
        format!("{} {}", mode.enabled, mode.default_enabled),
        format!(
            "{} {}",
            debug_field(&gsp, "enabled"),
            debug_field(&gsp, "default")
        ),
    );
    let ecc = text("is_ecc_enabled");
    let m = value(&gpu.ecc_mode, "ecc mode");
    eq(
        "is_ecc_enabled",
        format!("{} {}", m.current, m.pending),
        format!(
            "{} {}",
            debug_field(&ecc, "currently_enabled"),
            debug_field(&ecc, "pending_enabled")
        ),
    );
    let mem = text("memory_info");
    let m = value(&gpu.memory, "memory");
    eq(
        "memory_info",
        format!(
            "{} {} {} {}",
            m.free_bytes, m.reserved_bytes, m.total_bytes, m.used_bytes
        ),
        ["free", "reserved", "total", "used"]
            .map(|f| debug_field(&mem, f))
            .join(" "),
    );
    let mig = text("mig_mode");
    let m = value(&gpu.mig.mode, "mig mode");
    eq(
        "mig_mode",
        format!("{} {}", u8::from(m.current), u8::from(m.pending)),
        format!(
            "{} {}",
            debug_field(&mig, "current"),
            debug_field(&mig, "pending")
        ),
    );
    // No MIG devices exist: no GPU instances are reported.
    eq(
        "mig_device_count",
        value(&gpu.mig.gpu_instances, "gpu instances")
            .len()
            .to_string(),
        num("mig_device_count").to_string(),
    );
    let pci = text("pci_info");
    let p = value(&gpu.pci, "pci");
    let dev_id: u32 = debug_field(&pci, "pci_device_id").parse().unwrap();
    let sub = debug_field(&pci, "pci_sub_system_id");
    let sub: u32 = sub
        .trim_start_matches("Some(")
        .trim_end_matches(')')
        .parse()
        .unwrap();
    eq(
        "pci_info",
        format!("{} {} {:?}", p.bus_id, p.device_id, p.subsystem_id),
        format!(
            "{} 0x{dev_id:08X} {:?}",
            debug_field(&pci, "bus_id").trim_matches(['"', '\\']),
            Some(format!("0x{sub:08X}"))
        ),
    );
    eq(
        "is_cc_enabled",
        host_cc.0.to_string(),
        text("is_cc_enabled"),
    );
    eq(
        "is_cc_dev_mode_enabled",
        host_cc.1.to_string(),
        text("is_cc_dev_mode_enabled"),
    );

    // Errors: with CC off both CC calls fail with NVML's Unknown.
    for (k, code) in [
        (
            "cc_attestation_report",
            &gpu.confidential_computing.attestation_report.unavailable(),
        ),
        (
            "cc_certificate",
            &gpu.confidential_computing.certificates.unavailable(),
        ),
    ] {
        assert_eq!(dev[k]["error"], "Unknown", "fixture {k}");
        assert_eq!(
            code.map(|u| u.code),
            Some(ErrorCode::Unknown),
            "{k} must fail as on the real GPU"
        );
        seen.push(k);
    }

    // GPU-instance profiles: every supported index with every count; unsupported absent.
    let ours = value(&gpu.mig.gpu_instance_profiles, "profiles");
    let names = lgip_names();
    let mut supported = Vec::new();
    for p in dev["gpu_instance_profiles"].as_array().unwrap() {
        let index = p["profile"].as_u64().unwrap() as u32;
        if p.get("rc").is_some() {
            assert_eq!(p["rc"], 3, "only NOT_SUPPORTED is expected");
            assert!(
                ours.iter().all(|o| o.profile_index != index),
                "profile {index} is not offered"
            );
            continue;
        }
        supported.push(index);
        let o = ours
            .iter()
            .find(|o| o.profile_index == index)
            .unwrap_or_else(|| panic!("profile {index} missing"));
        let got = [
            o.id,
            o.max_instances,
            o.slices,
            o.multiprocessors,
            o.copy_engines,
            o.decoders,
            o.encoders,
            o.jpeg_engines,
            o.ofa_engines,
        ];
        let want = [
            "id",
            "instances",
            "slices",
            "sms",
            "copy_engines",
            "decoders",
            "encoders",
            "jpeg",
            "ofa",
        ]
        .map(|k| {
            p[k].as_u64()
                .unwrap_or_else(|| panic!("profile {index} {k}")) as u32
        });
        assert_eq!(
            got, want,
            "profile {index}: id, instances, slices, SMs, CE, DEC, ENC, JPEG, OFA"
        );
        assert_eq!(
            o.memory_mib,
            p["memory_mb"].as_u64().unwrap(),
            "profile {index} memory"
        );
        assert_eq!(
            Some(&o.name),
            names.get(&o.id),
            "profile {index} name, as nvidia-smi mig -lgip"
        );
    }
    assert_eq!(ours.len(), supported.len(), "no extra profiles");
    assert_eq!(ours.len(), 7);
    seen.push("gpu_instance_profiles");

    let mut unaccounted: Vec<&String> =
        dev.keys().filter(|k| !seen.contains(&k.as_str())).collect();
    unaccounted.sort();
    assert!(
        unaccounted.is_empty(),
        "fixture fields the test does not compare: {unaccounted:?}"
    );
}

/// Profile id → name from `nvidia-smi mig -lgip`.
fn lgip_names() -> BTreeMap<u32, String> {
    read("mig-lgip.txt")
        .lines()
        .filter_map(|l| {
            let rest = l.split("MIG ").nth(1)?;
            let mut it = rest.split_whitespace();
            let name = it.next()?.to_owned();
            let id = it.next()?.parse().ok()?;
            Some((id, name))
        })
        .collect()
}

fn xml<'a>(doc: &'a str, path: &[&str]) -> &'a str {
    let mut s = doc;
    for tag in path {
        let open = format!("<{tag}>");
        let start = s.find(&open).unwrap_or_else(|| panic!("<{tag}> missing")) + open.len();
        let end = s[start..].find(&format!("</{tag}>")).unwrap() + start;
        s = &s[start..end];
    }
    s.trim()
}

#[test]
fn simulated_h100_matches_the_nvml_record() {
    let probe: Value = serde_json::from_str(&read("nvml-probe.json")).unwrap();
    let e = evidence();
    assert_eq!(
        e.host.driver_version.value().unwrap(),
        &unwrap_text(probe["driver"].as_str().unwrap())
    );
    assert_eq!(
        e.host.nvml_version.value().unwrap(),
        &unwrap_text(probe["nvml_version"].as_str().unwrap())
    );
    let cuda: u32 = unwrap_text(probe["cuda_driver"].as_str().unwrap())
        .parse()
        .unwrap();
    assert_eq!(
        e.host.cuda_driver_version.value().unwrap(),
        &format!("{}.{}", cuda / 1000, cuda % 1000 / 10)
    );
    let devices = probe["devices"].as_array().unwrap();
    assert_eq!(e.gpus.len(), devices.len());
    let cc = e.host.confidential_computing.value().unwrap();
    let dev: BTreeMap<String, Value> = serde_json::from_value(devices[0].clone()).unwrap();
    check_device(&e.gpus[0], (cc.enabled, cc.dev_tools_mode), &dev);
}

#[test]
fn simulated_h100_matches_nvidia_smi_and_pynvml() {
    let e = evidence();
    let gpu = &e.gpus[0];
    let q = read("nvidia-smi-q.xml");
    assert_eq!(
        e.host.driver_version.value().unwrap(),
        xml(&q, &["driver_version"])
    );
    assert_eq!(
        e.host.cuda_driver_version.value().unwrap(),
        xml(&q, &["cuda_version"])
    );
    assert_eq!(
        gpu.inforom_image_version.value().unwrap(),
        xml(&q, &["inforom_version", "img_version"])
    );
    // ECC error totals: NVML sums SRAM and DRAM counts.
    let errs = gpu.ecc_errors.value().unwrap();
    for (counter, corrected, uncorrected) in [
        (
            "volatile",
            errs.volatile_corrected,
            errs.volatile_uncorrected,
        ),
        (
            "aggregate",
            errs.aggregate_corrected,
            errs.aggregate_uncorrected,
        ),
    ] {
        let block = xml(&q, &["ecc_errors", counter]);
        let sum = |tags: &[&str]| -> u64 {
            tags.iter()
                .map(|t| xml(block, &[t]).parse::<u64>().unwrap())
                .sum()
        };
        assert_eq!(
            corrected,
            sum(&["sram_correctable", "dram_correctable"]),
            "{counter} corrected"
        );
        assert_eq!(
            uncorrected,
            sum(&[
                "sram_uncorrectable_parity",
                "sram_uncorrectable_secded",
                "dram_uncorrectable"
            ]),
            "{counter} uncorrected"
        );
    }
    // Hopper retires no pages (N/A): the fact is NotSupported, never a zero.
    assert_eq!(
        xml(
            &q,
            &[
                "retired_pages",
                "multiple_single_bit_retirement",
                "retired_count"
            ]
        ),
        "N/A"
    );
    assert_unavailable(&gpu.retired_pages, ErrorCode::NotSupported, "retired pages");
    let rows = gpu.remapped_rows.value().unwrap();
    let yes_no = |b: bool| if b { "Yes" } else { "No" };
    assert_eq!(
        rows.correctable.to_string(),
        xml(&q, &["remapped_rows", "remapped_row_corr"])
    );
    assert_eq!(
        rows.uncorrectable.to_string(),
        xml(&q, &["remapped_rows", "remapped_row_unc"])
    );
    assert_eq!(
        yes_no(rows.pending),
        xml(&q, &["remapped_rows", "remapped_row_pending"])
    );
    assert_eq!(
        yes_no(rows.failure_occurred),
        xml(&q, &["remapped_rows", "remapped_row_failure"])
    );

    let py = read("pynvml.txt");
    let line = |k: &str| {
        py.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_else(|| panic!("{k}"))
            .trim()
            .to_owned()
    };
    assert_eq!(
        line("nvmlDeviceGetRemappedRows"),
        format!(
            "({}, {}, {}, {})",
            rows.correctable,
            rows.uncorrectable,
            u8::from(rows.pending),
            u8::from(rows.failure_occurred)
        )
    );
    assert_eq!(
        line("nvmlDeviceGetInforomImageVersion"),
        *gpu.inforom_image_version.value().unwrap()
    );
    let cc = e.host.confidential_computing.value().unwrap();
    assert!(
        line("nvmlSystemGetConfComputeState")
            .contains(&format!("'ccFeature': {}", u8::from(cc.enabled)))
    );
    assert!(read("cc.txt").contains(if cc.enabled {
        "CC status: ON"
    } else {
        "CC status: OFF"
    }));
}

#[test]
fn fixture_copies_equal_the_shared_ground_truth() {
    // The shared fixtures sit beside the checkout in development and CI; a plain clone
    // has only the copies, and then there is nothing to compare.
    let shared =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/gpu/h100-80gb-hbm3");
    if !shared.exists() {
        eprintln!("{} absent: copies not compared", shared.display());
        return;
    }
    for f in [
        "nvml-probe.json",
        "nvidia-smi-q.xml",
        "pynvml.txt",
        "mig-lgip.txt",
        "cc.txt",
    ] {
        assert_eq!(
            read(f),
            std::fs::read_to_string(shared.join(f)).unwrap(),
            "{f} differs from shared/"
        );
    }
}
