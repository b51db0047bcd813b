//! The simulated mode, for tests of the operator side without a GPU: the same checks on
//! the CPU (a real f32 product against the f64 reference, real pattern passes over a host
//! buffer, a real host copy), marked `simulated: true`, with faults that can be injected.

use std::time::Instant;

use lotabots_crds::workload::{
    BandwidthCheck, DeviceSelfTest, MatmulCheck, MemoryCheck, SelfTestReport,
};
use sha2::{Digest, Sha256};

use crate::pattern::{self, PASSES};
use crate::{Settings, gpu, reference};

/// Bytes of the host buffer standing in for device memory (the share applies to it).
pub const SIMULATED_MEMORY: u64 = 64 << 20;
/// Largest buffer the simulated bandwidth check copies.
pub const SIMULATED_COPY: u64 = 64 << 20;
/// Largest matrix side the simulated mode multiplies (the f32 "device" product is on the
/// CPU too); larger requests are clamped and the report says what was run.
pub const SIMULATED_MAX_N: u32 = 256;

/// A fault to inject, so that tests can see failing results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// Corrupt words of the "device" memory between writing and reading back.
    Memory,
    /// Perturb one entry of the "device" product.
    Matmul,
}

/// Runs the simulated checks for `devices` simulated GPUs of `node`.
pub fn run(settings: &Settings, node: &str, devices: u32, fault: Option<Fault>) -> SelfTestReport {
    SelfTestReport {
        simulated: true,
        driver_version: None,
        devices: (0..devices)
            .map(|ordinal| DeviceSelfTest {
                ordinal,
                uuid: simulated_uuid(node, ordinal),
                name: "Simulated GPU (CPU)".to_owned(),
                matmul: matmul(settings, fault),
                memory: memory(settings, fault),
                bandwidth: bandwidth(settings),
            })
            .collect(),
    }
}

/// A stable `GPU-…` UUID per node and ordinal, so repeated runs report the same devices.
pub fn simulated_uuid(node: &str, ordinal: u32) -> String {
    let digest = Sha256::new()
        .chain_update(b"lotabots simulated gpu\0")
        .chain_update(node.as_bytes())
        .chain_update(ordinal.to_le_bytes())
        .finalize();
    format!("GPU-{}", gpu::uuid_body(&digest[..16]))
}

fn matmul(settings: &Settings, fault: Option<Fault>) -> MatmulCheck {
    let n = settings.matmul_n.min(SIMULATED_MAX_N);
    let (a, b) = reference::inputs(n, settings.nonce);
    let started = Instant::now();
    let mut c = Vec::new();
    for _ in 0..settings.matmul_runs.max(1) {
        c = reference::product_f32(&a, &b, n as usize);
    }
    let seconds = started.elapsed().as_secs_f64();
    if fault == Some(Fault::Matmul) {
        // Far outside any tolerance: a unit error in the middle entry.
        let mid = c.len() / 2;
        c[mid] += 1.0;
    }
    let expected = reference::reference(&a, &b, n as usize);
    let max_abs_error = reference::max_abs_error(&c, &expected);
    let tolerance = reference::tolerance(n, reference::max_abs(&a), reference::max_abs(&b));
    MatmulCheck {
        n,
        max_abs_error,
        tolerance,
        gflops: reference::gflops(n, settings.matmul_runs.max(1), seconds),
        passed: max_abs_error <= tolerance,
    }
}

fn memory(settings: &Settings, fault: Option<Fault>) -> MemoryCheck {
    let words = ((SIMULATED_MEMORY as f64 * settings.memory_share) as usize / 4).max(1);
    let mut buf = vec![0u32; words];
    let seed = pattern::seed(&settings.nonce);
    let mut errors = 0;
    for p in PASSES {
        pattern::fill(&mut buf, p, seed);
        if fault == Some(Fault::Memory) {
            // A stuck bit: bit 3 of every 4096th word reads as 0. It shows in the passes
            // that set that bit and hides in those that clear it, like a real one.
            for w in buf.iter_mut().step_by(4096) {
                *w &= !(1 << 3);
            }
        }
        errors += pattern::count_errors(&buf, p, seed);
    }
    MemoryCheck {
        bytes_tested: words as u64 * 4,
        share: settings.memory_share,
        errors,
        passed: errors == 0,
    }
}

fn bandwidth(settings: &Settings) -> BandwidthCheck {
    let bytes = settings.bandwidth_bytes.min(SIMULATED_COPY) as usize;
    let src = vec![0x5au8; bytes];
    let mut dst = vec![0u8; bytes];
    dst.copy_from_slice(&src); // warm-up: fault the pages in
    let runs = settings.bandwidth_runs.max(1);
    let started = Instant::now();
    for _ in 0..runs {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
    }
    BandwidthCheck {
        bytes: bytes as u64,
        gbps: gpu::gbps(bytes as u64, runs, started.elapsed().as_secs_f64()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            matmul_n: 64,
            matmul_runs: 2,
            memory_share: 0.25,
            bandwidth_bytes: 1 << 20,
            bandwidth_runs: 2,
            nonce: [9; 32],
        }
    }

    #[test]
    fn a_healthy_simulation_passes_with_plausible_figures() {
        let r = run(&settings(), "node-a", 2, None);
        assert!(r.simulated);
        assert_eq!(r.devices.len(), 2);
        let d = &r.devices[0];
        assert!(d.matmul.passed && d.memory.passed);
        assert_eq!(d.matmul.n, 64);
        assert!(d.matmul.max_abs_error > 0.0 && d.matmul.max_abs_error < d.matmul.tolerance);
        assert!(d.matmul.gflops > 0.0);
        assert_eq!(d.memory.bytes_tested, 16 << 20);
        assert_eq!(d.memory.errors, 0);
        assert_eq!(d.bandwidth.bytes, 1 << 20);
        assert!(d.bandwidth.gbps > 0.0);
        assert_ne!(r.devices[0].uuid, r.devices[1].uuid);
        assert!(
            d.uuid.starts_with("GPU-") && d.uuid.len() == 40,
            "{}",
            d.uuid
        );
    }

    #[test]
    fn memory_fault_is_counted() {
        let r = run(&settings(), "node-a", 1, Some(Fault::Memory));
        let m = &r.devices[0].memory;
        assert!(!m.passed);
        // 4 Mi words, every 4096th: 1024 words; bit 3 is set in walking ones for 1 word in
        // 32 and in walking zeros for 31 in 32, and in half the address words.
        assert!(m.errors > 1024, "{}", m.errors);
        assert!(r.devices[0].matmul.passed);
    }

    #[test]
    fn matmul_fault_exceeds_tolerance() {
        let r = run(&settings(), "node-a", 1, Some(Fault::Matmul));
        let m = &r.devices[0].matmul;
        assert!(!m.passed);
        assert!(m.max_abs_error > 0.9, "{}", m.max_abs_error);
        assert!(r.devices[0].memory.passed);
    }

    #[test]
    fn uuids_are_stable_per_node() {
        assert_eq!(simulated_uuid("a", 0), simulated_uuid("a", 0));
        assert_ne!(simulated_uuid("a", 0), simulated_uuid("b", 0));
    }

    #[test]
    fn large_requests_are_clamped() {
        let s = Settings {
            matmul_n: 4096,
            matmul_runs: 1,
            ..settings()
        };
        assert_eq!(matmul(&s, None).n, SIMULATED_MAX_N);
    }
}
