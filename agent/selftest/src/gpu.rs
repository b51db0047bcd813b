//! The checks on real GPUs, through the CUDA driver API loaded at run time (`cudarc` with
//! dynamic loading: `libcuda.so.1` is opened on first use, nothing is linked at build time).
//!
//! Unsafe code is allowed in this module only, for three things the safe API does not cover:
//! probing for the driver library, asking its version, and launching our kernels.
#![allow(unsafe_code)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DriverError, LaunchConfig, PushKernelArg, sys,
};
use cudarc::nvrtc::Ptx;
use lotabots_crds::workload::{
    BandwidthCheck, DeviceSelfTest, MatmulCheck, MemoryCheck, SelfTestReport,
};

use crate::pattern::{self, PASSES};
use crate::{RunError, Settings, ptx, reference};

/// The message when the driver library is absent: the pod has no NVIDIA driver mounted.
pub const NO_DRIVER: &str = "libcuda.so.1 not found: this pod has no NVIDIA driver; was the \
     nvidia runtime class / device plugin used?";

/// Whether the CUDA driver library can be opened here.
pub fn driver_present() -> bool {
    // SAFETY: dlopen of the CUDA driver runs its initialisers, which is what using the
    // driver API means anyway; the handle is dropped (dlclose) at once and no symbol from
    // it is called.
    unsafe { sys::is_culib_present() }
}

/// Runs every check on every visible device.
///
/// Refuses with [`RunError::NoGpu`] when there is no driver library, the driver does not
/// initialise, or it shows no device.
pub fn run(settings: &Settings) -> Result<SelfTestReport, RunError> {
    // cudarc panics where it cannot load the library (checked first) or a symbol of it (an
    // older driver than the CUDA 12.0 API we bind to): turn a panic into an error naming it.
    catch_unwind(AssertUnwindSafe(|| run_devices(settings))).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        Err(RunError::Failed(format!("CUDA driver API: {what}")))
    })
}

fn run_devices(settings: &Settings) -> Result<SelfTestReport, RunError> {
    if !driver_present() {
        return Err(RunError::NoGpu(NO_DRIVER.to_owned()));
    }
    let driver_version = driver_version().map_err(|e| {
        RunError::NoGpu(format!(
            "the CUDA driver library loads but does not answer its version ({})",
            describe(&e)
        ))
    })?;
    let count = CudaContext::device_count().map_err(|e| {
        RunError::NoGpu(format!(
            "the CUDA driver (version {}) does not initialise: {}; is the GPU visible to this \
             pod (nvidia.com/gpu resource, NVIDIA_VISIBLE_DEVICES)?",
            format_version(driver_version),
            describe(&e)
        ))
    })?;
    if count <= 0 {
        return Err(RunError::NoGpu(format!(
            "the CUDA driver (version {}) shows no device: was a GPU or MIG device requested \
             (nvidia.com/gpu, nvidia.com/mig-…) and granted?",
            format_version(driver_version)
        )));
    }
    let mut devices = Vec::new();
    for ordinal in 0..count {
        let ordinal = ordinal as usize;
        devices.push(
            run_device(ordinal, settings)
                .map_err(|e| RunError::Failed(format!("device {ordinal}: {e}")))?,
        );
    }
    Ok(SelfTestReport {
        simulated: false,
        driver_version: Some(driver_version),
        devices,
    })
}

/// What went wrong during a check: a driver error with what was being done, or a finding
/// that makes the check's own result untrustworthy.
#[derive(Debug)]
struct Step {
    what: String,
    source: Option<DriverError>,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Some(e) => write!(f, "{}: {}", self.what, describe(e)),
            None => f.write_str(&self.what),
        }
    }
}

trait Context<T> {
    fn during(self, what: impl Into<String>) -> Result<T, Step>;
}

impl<T> Context<T> for Result<T, DriverError> {
    fn during(self, what: impl Into<String>) -> Result<T, Step> {
        self.map_err(|source| Step {
            what: what.into(),
            source: Some(source),
        })
    }
}

fn run_device(ordinal: usize, settings: &Settings) -> Result<DeviceSelfTest, Step> {
    let ctx = CudaContext::new(ordinal).during("creating a context")?;
    let name = ctx.name().during("reading the device name")?;
    let uuid = format_uuid(&ctx.uuid().during("reading the device UUID")?);
    let sms = ctx
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .during("reading the multiprocessor count")?;
    tracing::info!(ordinal, %name, %uuid, sms, "testing device");
    let stream = ctx.default_stream();
    let module = ctx.load_module(Ptx::from_src(ptx::SOURCE)).map_err(|e| {
        // The bare error (CUDA_ERROR_INVALID_PTX, …) does not say what the JIT
        // disliked: load again asking for its log.
        let what = match jit_error_log() {
            Some(log) => format!("loading the self-test PTX (driver JIT said: {log})"),
            None => "loading the self-test PTX (driver JIT)".to_owned(),
        };
        Step {
            what,
            source: Some(e),
        }
    })?;
    let load = |entry: &str| {
        module
            .load_function(entry)
            .during(format!("finding kernel {entry}"))
    };
    let kernels = Kernels {
        sgemm: load(ptx::SGEMM)?,
        fill: load(ptx::PATTERN_FILL)?,
        check: load(ptx::PATTERN_CHECK)?,
        // At least one block per SM, at most 32 resident: enough to saturate memory.
        pattern_blocks: u32::try_from(sms.max(1)).unwrap_or(1) * 32,
    };
    let matmul = matmul(&ctx, &stream, &kernels, settings)?;
    tracing::info!(ordinal, ?matmul, "matrix multiply");
    let bandwidth = bandwidth(&ctx, &stream, settings)?;
    tracing::info!(ordinal, ?bandwidth, "copy bandwidth");
    // Last, once the other checks' buffers are freed, so the share is of what is left.
    let memory = memory(&ctx, &stream, &kernels, settings)?;
    tracing::info!(ordinal, ?memory, "memory pattern");
    Ok(DeviceSelfTest {
        ordinal: ordinal as u32,
        uuid,
        name,
        matmul,
        memory,
        bandwidth,
    })
}

struct Kernels {
    sgemm: CudaFunction,
    fill: CudaFunction,
    check: CudaFunction,
    pattern_blocks: u32,
}

fn timing_event(ctx: &Arc<CudaContext>) -> Result<cudarc::driver::CudaEvent, Step> {
    ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
        .during("creating a timing event")
}

fn matmul(
    ctx: &Arc<CudaContext>,
    stream: &Arc<CudaStream>,
    kernels: &Kernels,
    settings: &Settings,
) -> Result<MatmulCheck, Step> {
    let n = settings.matmul_n;
    let len = (n as usize) * (n as usize);
    let (a, b) = reference::inputs(n, settings.nonce);
    let a_dev = stream.clone_htod(&a).during("copying A to the device")?;
    let b_dev = stream.clone_htod(&b).during("copying B to the device")?;
    let mut c_dev = stream
        .alloc_zeros::<f32>(len)
        .during("allocating C on the device")?;
    let blocks = n.div_ceil(ptx::SGEMM_BLOCK_TILE);
    let cfg = LaunchConfig {
        grid_dim: (blocks, blocks, 1),
        block_dim: (ptx::SGEMM_THREADS, ptx::SGEMM_THREADS, 1),
        shared_mem_bytes: 0,
    };
    let launch = |c_dev: &mut CudaSlice<f32>| {
        let mut args = stream.launch_builder(&kernels.sgemm);
        args.arg(&a_dev).arg(&b_dev).arg(c_dev).arg(&n);
        // SAFETY: lotabots_sgemm takes (f32* a, f32* b, f32* c, u32 n), which is what is
        // pushed; a and b hold n·n elements and c was allocated with n·n, and the kernel
        // touches only indices below n·n (every load and store checks row < n and col < n).
        unsafe { args.launch(cfg) }.map(|_| ())
    };
    launch(&mut c_dev).during("launching lotabots_sgemm")?;
    let c = stream
        .clone_dtoh(&c_dev)
        .during("copying C back from the device")?;
    // The CPU reference runs while nothing is timed on the device.
    let expected = reference::reference(&a, &b, n as usize);
    let max_abs_error = reference::max_abs_error(&c, &expected);
    let tolerance = reference::tolerance(n, reference::max_abs(&a), reference::max_abs(&b));

    let start = timing_event(ctx)?;
    let end = timing_event(ctx)?;
    start.record(stream).during("recording the start event")?;
    for _ in 0..settings.matmul_runs {
        launch(&mut c_dev).during("launching lotabots_sgemm (timed)")?;
    }
    end.record(stream).during("recording the end event")?;
    let ms = start.elapsed_ms(&end).during("timing the products")?;
    Ok(MatmulCheck {
        n,
        max_abs_error,
        tolerance,
        gflops: reference::gflops(n, settings.matmul_runs, f64::from(ms) / 1e3),
        passed: max_abs_error <= tolerance,
    })
}

fn bandwidth(
    ctx: &Arc<CudaContext>,
    stream: &Arc<CudaStream>,
    settings: &Settings,
) -> Result<BandwidthCheck, Step> {
    let (free, _) = ctx.mem_get_info().during("reading free memory")?;
    // Two buffers: stay within an eighth of free memory each so a busy device still runs.
    let bytes = settings.bandwidth_bytes.min(free as u64 / 8) & !0xfff;
    let words = (bytes / 4) as usize;
    let src = stream
        .alloc_zeros::<u32>(words)
        .during(format!("allocating {bytes} bytes to copy from"))?;
    let mut dst = stream
        .alloc_zeros::<u32>(words)
        .during(format!("allocating {bytes} bytes to copy to"))?;
    // Untimed warm-up: first touches map pages and wake the memory clocks.
    for _ in 0..2 {
        stream
            .memcpy_dtod(&src, &mut dst)
            .during("copying (warm-up)")?;
    }
    let start = timing_event(ctx)?;
    let end = timing_event(ctx)?;
    start.record(stream).during("recording the start event")?;
    for _ in 0..settings.bandwidth_runs {
        stream.memcpy_dtod(&src, &mut dst).during("copying")?;
    }
    end.record(stream).during("recording the end event")?;
    let ms = start.elapsed_ms(&end).during("timing the copies")?;
    Ok(BandwidthCheck {
        bytes,
        gbps: gbps(bytes, settings.bandwidth_runs, f64::from(ms) / 1e3),
    })
}

/// 10^9 bytes per second of `runs` copies of `bytes` in `seconds`.
pub fn gbps(bytes: u64, runs: u32, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        return 0.0;
    }
    bytes as f64 * f64::from(runs) / seconds / 1e9
}

fn memory(
    ctx: &Arc<CudaContext>,
    stream: &Arc<CudaStream>,
    kernels: &Kernels,
    settings: &Settings,
) -> Result<MemoryCheck, Step> {
    let (free, _) = ctx.mem_get_info().during("reading free memory")?;
    let words = ((free as f64 * settings.memory_share) as u64 / 4).max(1);
    let bytes_tested = words * 4;
    let mut buf = stream.alloc_zeros::<u32>(words as usize).during(format!(
        "allocating {bytes_tested} bytes ({:.2} of {free} free) for the memory test",
        settings.memory_share
    ))?;
    let seed = pattern::seed(&settings.nonce);
    let cfg = LaunchConfig {
        grid_dim: (
            kernels.pattern_blocks.min(
                u32::try_from(words.div_ceil(u64::from(ptx::PATTERN_BLOCK))).unwrap_or(u32::MAX),
            ),
            1,
            1,
        ),
        block_dim: (ptx::PATTERN_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut errors = 0u64;
    for (pass, p) in PASSES.into_iter().enumerate() {
        let kind = p.kind();
        {
            let mut args = stream.launch_builder(&kernels.fill);
            args.arg(&mut buf).arg(&words).arg(&kind).arg(&seed);
            // SAFETY: lotabots_pattern_fill takes (u32* buf, u64 words, u32 kind, u32 seed),
            // as pushed; buf holds `words` u32 and the grid-stride loop stops below `words`.
            unsafe { args.launch(cfg) }.during(format!("launching the {} fill", p.name()))?;
        }
        // One wrong word planted in the first pass: a checker that cannot find it (a
        // miscompiled kernel, a lost atomic) must not report clean memory.
        let canary = (pass == 0).then_some(words / 2);
        if let Some(at) = canary {
            let wrong = [!p.word(at, seed)];
            let at = at as usize;
            stream
                .memcpy_htod(&wrong, &mut buf.slice_mut(at..at + 1))
                .during("planting the checker's canary")?;
        }
        let mut counter = stream
            .alloc_zeros::<u64>(1)
            .during("allocating the error counter")?;
        {
            let mut args = stream.launch_builder(&kernels.check);
            args.arg(&buf)
                .arg(&words)
                .arg(&kind)
                .arg(&seed)
                .arg(&mut counter);
            // SAFETY: lotabots_pattern_check takes (u32* buf, u64 words, u32 kind,
            // u32 seed, u64* errors), as pushed; buf holds `words` u32, errors one u64.
            unsafe { args.launch(cfg) }.during(format!("launching the {} check", p.name()))?;
        }
        let found = stream
            .clone_dtoh(&counter)
            .during("reading the error counter")?[0];
        let found = match canary {
            Some(_) if found == 0 => {
                return Err(Step {
                    what: "the memory checker missed the word planted to test it; its \
                           results cannot be trusted"
                        .into(),
                    source: None,
                });
            }
            Some(_) => found - 1,
            None => found,
        };
        if found > 0 {
            tracing::warn!(
                pattern = p.name(),
                errors = found,
                "memory words read back wrong"
            );
        }
        errors += found;
    }
    Ok(MemoryCheck {
        bytes_tested,
        share: settings.memory_share,
        errors,
        passed: errors == 0,
    })
}

/// The driver JIT's error log for our PTX, when it refuses it (the current context's).
fn jit_error_log() -> Option<String> {
    let src = std::ffi::CString::new(ptx::SOURCE).ok()?;
    let mut log = vec![0u8; 16 * 1024];
    let mut options = [
        sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER,
        sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
    ];
    // The size travels in a pointer-sized slot, as the driver API defines option values.
    let mut values: [*mut std::ffi::c_void; 2] = [
        log.as_mut_ptr().cast(),
        std::ptr::without_provenance_mut(log.len()),
    ];
    let mut module: sys::CUmodule = std::ptr::null_mut();
    // SAFETY: `src` is a NUL-terminated PTX text alive for the call; `options` and
    // `values` hold 2 entries each, as passed; the log buffer is writable for the size
    // given in the second option; `module` is a valid out-pointer.
    let loaded = unsafe {
        sys::cuModuleLoadDataEx(
            &mut module,
            src.as_ptr().cast(),
            2,
            options.as_mut_ptr(),
            values.as_mut_ptr(),
        )
    };
    if loaded == sys::CUresult::CUDA_SUCCESS {
        // SAFETY: `module` was just loaded by this thread's current context and is not
        // used after.
        let _ = unsafe { sys::cuModuleUnload(module) };
        return None;
    }
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]).trim().to_owned();
    (!text.is_empty()).then_some(text)
}

fn driver_version() -> Result<u32, DriverError> {
    let mut version: std::ffi::c_int = 0;
    // SAFETY: cuDriverGetVersion writes one int through the pointer, which points to a
    // live, aligned c_int; it may be called before cuInit.
    unsafe { sys::cuDriverGetVersion(&mut version) }.result()?;
    Ok(u32::try_from(version).unwrap_or(0))
}

/// `12080` → `12.8`.
pub fn format_version(v: u32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// A driver error by name and explanation (`CUDA_ERROR_NO_DEVICE: no CUDA-capable …`).
fn describe(e: &DriverError) -> String {
    let name = e
        .error_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", e.0));
    match e.error_string() {
        Ok(s) => format!("{name}: {}", s.to_string_lossy()),
        Err(_) => name,
    }
}

/// The device's UUID as NVML and `nvidia-smi -L` print it: `MIG-…` for a MIG device
/// (recognised by the container runtime naming it in `NVIDIA_VISIBLE_DEVICES` or
/// `CUDA_VISIBLE_DEVICES`, as the device plugin does for MIG resources), else `GPU-…`.
fn format_uuid(uuid: &sys::CUuuid) -> String {
    let bytes: Vec<u8> = uuid.bytes.iter().map(|&b| b as u8).collect();
    let body = uuid_body(&bytes);
    let mig = format!("MIG-{body}");
    let named_as_mig = ["NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .any(|list| list.split(',').any(|d| d.trim().eq_ignore_ascii_case(&mig)));
    if named_as_mig {
        mig
    } else {
        format!("GPU-{body}")
    }
}

/// 16 bytes as `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub fn uuid_body(bytes: &[u8]) -> String {
    let h = hex::encode(bytes);
    if h.len() != 32 {
        return h;
    }
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_formatted_like_nvml() {
        let bytes: Vec<u8> = (0u8..16).collect();
        assert_eq!(uuid_body(&bytes), "00010203-0405-0607-0809-0a0b0c0d0e0f");
    }

    #[test]
    fn versions_read_like_cuda() {
        assert_eq!(format_version(12080), "12.8");
        assert_eq!(format_version(13000), "13.0");
    }

    #[test]
    fn gbps_is_bytes_per_second() {
        assert_eq!(gbps(1_000_000_000, 10, 5.0), 2.0);
        assert_eq!(gbps(1, 1, 0.0), 0.0);
    }

    #[test]
    fn without_a_driver_the_refusal_names_it() {
        if driver_present() {
            // A machine with a driver cannot show the refusal; the GPU run covers it.
            return;
        }
        let settings = Settings {
            matmul_n: 16,
            matmul_runs: 1,
            memory_share: 0.1,
            bandwidth_bytes: 1 << 20,
            bandwidth_runs: 1,
            nonce: [0; 32],
        };
        match run(&settings) {
            Err(RunError::NoGpu(msg)) => {
                assert!(msg.starts_with("libcuda.so.1 not found"), "{msg}");
                assert!(msg.contains("runtime class"), "{msg}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
