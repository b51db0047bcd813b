//! The self-test's GPU kernels: hand-written PTX embedded in the binary.
//!
//! The driver JIT-compiles the text for the device it runs on (`cuModuleLoadData`), so the
//! image needs neither the CUDA toolkit nor NVRTC. `kernels/selftest.ptx` documents each
//! entry's parameters; the names here must match its `.entry` lines (a unit test checks).

/// The PTX module text.
pub const SOURCE: &str = include_str!("kernels/selftest.ptx");

/// `lotabots_sgemm(a, b, c, n)`: C = A·B for n×n row-major f32 matrices.
pub const SGEMM: &str = "lotabots_sgemm";
/// Side of the square tile of C one thread block of [`SGEMM`] computes.
pub const SGEMM_BLOCK_TILE: u32 = 64;
/// Side of the square thread block of [`SGEMM`] (each thread computes 4×4 entries).
pub const SGEMM_THREADS: u32 = 16;

/// `lotabots_pattern_fill(buf, words, kind, seed)`.
pub const PATTERN_FILL: &str = "lotabots_pattern_fill";
/// `lotabots_pattern_check(buf, words, kind, seed, errors)`.
pub const PATTERN_CHECK: &str = "lotabots_pattern_check";

/// Threads per block of the grid-stride pattern kernels.
pub const PATTERN_BLOCK: u32 = 256;

/// Every entry the host code loads.
pub const ENTRIES: [&str; 3] = [SGEMM, PATTERN_FILL, PATTERN_CHECK];

/// The names of the `.visible .entry` kernels the text declares, in order.
pub fn declared_entries(source: &str) -> Vec<&str> {
    source
        .lines()
        .filter_map(|line| line.trim().strip_prefix(".visible .entry "))
        .map(|rest| rest.split('(').next().unwrap_or(rest).trim())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declares_every_entry_the_host_loads() {
        assert_eq!(declared_entries(SOURCE), ENTRIES.to_vec());
    }

    #[test]
    fn has_the_header_the_driver_jit_needs() {
        // Directives must precede every declaration, in this order, or the JIT refuses.
        let directives: Vec<&str> = SOURCE
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("//"))
            .take(3)
            .collect();
        assert_eq!(
            directives,
            [".version 7.0", ".target sm_60", ".address_size 64"]
        );
    }

    #[test]
    fn is_plain_ascii_without_nul() {
        // cuModuleLoadData reads a NUL-terminated string: an embedded NUL would cut it.
        assert!(SOURCE.is_ascii());
        assert!(!SOURCE.contains('\0'));
    }

    #[test]
    fn braces_balance_and_every_entry_returns() {
        let opens = SOURCE.matches('{').count();
        assert_eq!(opens, SOURCE.matches('}').count());
        assert_eq!(opens, ENTRIES.len());
        assert_eq!(SOURCE.matches("\tret;").count(), ENTRIES.len());
    }

    #[test]
    fn tile_size_matches_the_kernel() {
        // The kernel hard-codes a 64-wide block tile of 16×16 threads and 16-deep slices
        // of k: slices of 16·64 f32, rows of C at ctaid·64, 4 entries per thread a side.
        assert!(SOURCE.contains(".b8 lotabots_tile_a[4096]"));
        assert!(SOURCE.contains(".b8 lotabots_tile_b[4096]"));
        assert!(SOURCE.contains("shl.b32 \t%r7, %r5, 6;"));
        assert_eq!(SGEMM_THREADS * 4, SGEMM_BLOCK_TILE);
        assert_eq!(16 * SGEMM_BLOCK_TILE * 4, 4096);
    }
}
