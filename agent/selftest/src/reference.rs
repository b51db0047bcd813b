//! The CPU side of the matrix-multiply check: inputs drawn from the nonce, the reference
//! product, and the tolerance the device's product is held to.

use rand::{Rng, SeedableRng, rngs::StdRng};
use rayon::prelude::*;

/// Smallest accepted matrix side.
pub const MIN_N: u32 = 16;
/// Largest accepted matrix side: the CPU reference grows as n³ (8192 is ~1.1 TFLOP of
/// f64 work) and the kernel indexes elements with 32 bits.
pub const MAX_N: u32 = 8192;

/// Two n×n row-major matrices with entries uniform in [-1, 1), drawn from `seed` (the
/// nonce), so a device cannot answer with a product it computed before the challenge.
pub fn inputs(n: u32, seed: [u8; 32]) -> (Vec<f32>, Vec<f32>) {
    let len = (n as usize) * (n as usize);
    let mut rng = StdRng::from_seed(seed);
    let mut draw = || (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let a = draw();
    let b = draw();
    (a, b)
}

/// C = A·B in f64 (each product and sum exact to ~1e-16), so that the reference's own
/// rounding is negligible next to the f32 device's.
pub fn reference(a: &[f32], b: &[f32], n: usize) -> Vec<f64> {
    assert_eq!(a.len(), n * n, "A is not {n}x{n}");
    assert_eq!(b.len(), n * n, "B is not {n}x{n}");
    let mut c = vec![0f64; n * n];
    // One output row per task; i-k-j order streams rows of B and vectorises.
    c.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        for (k, &aik) in a[i * n..(i + 1) * n].iter().enumerate() {
            let aik = f64::from(aik);
            for (cij, &bkj) in row.iter_mut().zip(&b[k * n..(k + 1) * n]) {
                *cij += aik * f64::from(bkj);
            }
        }
    });
    c
}

/// C = A·B accumulated in f32 as a device would: the simulated mode's "device" product.
pub fn product_f32(a: &[f32], b: &[f32], n: usize) -> Vec<f32> {
    assert_eq!(a.len(), n * n, "A is not {n}x{n}");
    assert_eq!(b.len(), n * n, "B is not {n}x{n}");
    let mut c = vec![0f32; n * n];
    c.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        for (k, &aik) in a[i * n..(i + 1) * n].iter().enumerate() {
            for (cij, &bkj) in row.iter_mut().zip(&b[k * n..(k + 1) * n]) {
                *cij = aik.mul_add(bkj, *cij);
            }
        }
    });
    c
}

/// The largest |device − reference| an f32 product of n×n matrices whose entries are
/// bounded by `max_a` and `max_b` may show.
///
/// Each entry is a sum of n products bounded by max_a·max_b. Rounding errors of a length-n
/// f32 sum behave like a random walk, growing as √n·ε·Σ|aᵢbᵢ| ≤ √n·ε·n·max_a·max_b; twice that
/// leaves room for the device's summation order (tiles, FMA) without letting through a real
/// fault: one wrong product or a flipped exponent bit moves an entry by ~0.1 or more, while
/// for n = 1024 and entries in [-1, 1] the tolerance is ~8e-3.
pub fn tolerance(n: u32, max_a: f32, max_b: f32) -> f64 {
    let n = f64::from(n);
    2.0 * n.sqrt() * f64::from(f32::EPSILON) * n * f64::from(max_a) * f64::from(max_b)
}

/// The largest absolute entry of a matrix.
pub fn max_abs(m: &[f32]) -> f32 {
    m.iter().fold(0f32, |acc, x| acc.max(x.abs()))
}

/// The largest |device − reference| over all entries; a NaN or infinity in the device's
/// product counts as an infinite error (NaN would otherwise compare as "not larger").
pub fn max_abs_error(device: &[f32], reference: &[f64]) -> f64 {
    assert_eq!(device.len(), reference.len(), "products differ in size");
    device
        .iter()
        .zip(reference)
        .map(|(&d, &r)| {
            let e = (f64::from(d) - r).abs();
            if e.is_finite() { e } else { f64::INFINITY }
        })
        .fold(0f64, f64::max)
}

/// FP32 GFLOP/s of `runs` n×n products (2n³ operations each) in `seconds`.
pub fn gflops(n: u32, runs: u32, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        return 0.0;
    }
    2.0 * f64::from(n).powi(3) * f64::from(runs) / seconds / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], n: usize) -> Vec<f64> {
        let mut c = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                c[i * n + j] = (0..n)
                    .map(|k| f64::from(a[i * n + k]) * f64::from(b[k * n + j]))
                    .sum();
            }
        }
        c
    }

    #[test]
    fn reference_multiplies_a_known_product() {
        // [1 2; 3 4] · [5 6; 7 8] = [19 22; 43 50]
        let c = reference(&[1., 2., 3., 4.], &[5., 6., 7., 8.], 2);
        assert_eq!(c, [19., 22., 43., 50.]);
        // Not symmetric in its arguments: B·A differs.
        let c = reference(&[5., 6., 7., 8.], &[1., 2., 3., 4.], 2);
        assert_eq!(c, [23., 34., 31., 46.]);
    }

    #[test]
    fn reference_matches_the_textbook_loop() {
        let (a, b) = inputs(37, [7; 32]);
        let fast = reference(&a, &b, 37);
        let slow = naive(&a, &b, 37);
        for (x, y) in fast.iter().zip(&slow) {
            assert!((x - y).abs() < 1e-12, "{x} vs {y}");
        }
    }

    #[test]
    fn inputs_follow_the_seed() {
        let (a1, b1) = inputs(32, [1; 32]);
        let (a2, _) = inputs(32, [1; 32]);
        let (a3, _) = inputs(32, [2; 32]);
        assert_eq!(a1, a2);
        assert_ne!(a1, a3);
        assert_ne!(a1, b1);
        assert!(a1.iter().chain(&b1).all(|x| (-1.0..1.0).contains(x)));
        // Spread over the range, not a constant.
        assert!(max_abs(&a1) > 0.9);
    }

    #[test]
    fn an_honest_f32_product_is_within_tolerance() {
        for n in [16u32, 100, 256] {
            let (a, b) = inputs(n, [3; 32]);
            let tol = tolerance(n, max_abs(&a), max_abs(&b));
            let err = max_abs_error(
                &product_f32(&a, &b, n as usize),
                &reference(&a, &b, n as usize),
            );
            assert!(err > 0.0, "n={n}: f32 rounding should show");
            assert!(err < tol / 4.0, "n={n}: error {err} too close to {tol}");
        }
    }

    #[test]
    fn a_single_wrong_product_exceeds_tolerance() {
        let n = 256u32;
        let (a, b) = inputs(n, [4; 32]);
        let mut c = product_f32(&a, &b, n as usize);
        let reference = reference(&a, &b, n as usize);
        // A device that dropped one term a[0][7]·b[7][0] of one entry.
        c[0] -= a[7] * b[7 * n as usize];
        let tol = tolerance(n, max_abs(&a), max_abs(&b));
        let err = max_abs_error(&c, &reference);
        // Holds for this seed: the dropped term is ~0.3, the tolerance ~2e-3.
        assert!(err > tol, "error {err} within {tol}");
    }

    #[test]
    fn tolerance_grows_with_n_and_magnitude() {
        assert!(tolerance(1024, 1., 1.) > tolerance(256, 1., 1.));
        assert!(tolerance(256, 2., 1.) > tolerance(256, 1., 1.));
        let t = tolerance(1024, 1., 1.);
        assert!((7e-3..9e-3).contains(&t), "{t}");
    }

    #[test]
    fn nan_and_infinity_fail() {
        assert_eq!(max_abs_error(&[f32::NAN], &[1.0]), f64::INFINITY);
        assert_eq!(max_abs_error(&[f32::INFINITY], &[1.0]), f64::INFINITY);
        assert_eq!(max_abs_error(&[1.5], &[1.0]), 0.5);
    }

    #[test]
    fn gflops_counts_two_flops_per_multiply_add() {
        assert_eq!(gflops(1000, 1, 1.0), 2.0);
        assert_eq!(gflops(1000, 5, 0.5), 20.0);
        assert_eq!(gflops(1000, 1, 0.0), 0.0);
    }
}
