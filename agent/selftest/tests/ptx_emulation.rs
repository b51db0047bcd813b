//! The hand-written kernels executed instruction by instruction (tests/emulator), so that a
//! wrong index, branch or barrier in the PTX fails here even where no GPU is lent: the
//! product equals the CPU reference, the fill writes exactly `pattern::Pattern::word`, and
//! the checker counts exactly the corrupted words.

mod emulator;

use emulator::{Arg, Memory, Module};
use lotabots_gpu_selftest::pattern::{PASSES, Pattern};
use lotabots_gpu_selftest::{ptx, reference};

fn module() -> Module {
    Module::parse(ptx::SOURCE).expect("the self-test PTX parses")
}

fn sgemm(n: u32, seed: u8) -> (Vec<f32>, Vec<f64>, f64) {
    sgemm_of(&module(), n, seed)
}

fn sgemm_of(module: &Module, n: u32, seed: u8) -> (Vec<f32>, Vec<f64>, f64) {
    let (a, b) = reference::inputs(n, [seed; 32]);
    let mut mem = Memory::default();
    let pa = mem.alloc_f32(&a);
    let pb = mem.alloc_f32(&b);
    let pc = mem.alloc((n * n * 4) as usize);
    let blocks = n.div_ceil(ptx::SGEMM_BLOCK_TILE);
    module
        .launch(
            ptx::SGEMM,
            (blocks, blocks),
            (ptx::SGEMM_THREADS, ptx::SGEMM_THREADS),
            &[Arg::Ptr(pa), Arg::Ptr(pb), Arg::Ptr(pc), Arg::U32(n)],
            &mut mem,
        )
        .unwrap();
    let c = mem.read_f32(pc, (n * n) as usize);
    let tol = reference::tolerance(n, reference::max_abs(&a), reference::max_abs(&b));
    (c, reference::reference(&a, &b, n as usize), tol)
}

#[test]
fn sgemm_matches_the_reference_on_whole_tiles() {
    let (c, expected, tol) = sgemm(64, 1);
    let err = reference::max_abs_error(&c, &expected);
    assert!(err <= tol, "max error {err} > {tol}");
    // Every entry was written (an unwritten one would be 0 against a non-zero reference).
    assert!(
        c.iter()
            .zip(&expected)
            .all(|(x, r)| (f64::from(*x) - r).abs() <= tol)
    );
}

#[test]
fn sgemm_handles_a_ragged_edge() {
    // 80 = one whole 64-wide block tile and a partial one, 5 slices of k: block indices,
    // the bounds checks and the zero padding all matter.
    let (c, expected, tol) = sgemm(80, 2);
    let err = reference::max_abs_error(&c, &expected);
    assert!(err <= tol, "max error {err} > {tol}");
}

#[test]
fn sgemm_is_not_transposed() {
    // A non-symmetric product where A·B, Aᵀ·B and B·A all differ.
    let n = 16u32;
    let a: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 - 3.0).collect();
    let b: Vec<f32> = (0..n * n).map(|i| (i % 5) as f32 * 0.5).collect();
    let mut mem = Memory::default();
    let (pa, pb) = (mem.alloc_f32(&a), mem.alloc_f32(&b));
    let pc = mem.alloc((n * n * 4) as usize);
    module()
        .launch(
            ptx::SGEMM,
            (1, 1),
            (16, 16),
            &[Arg::Ptr(pa), Arg::Ptr(pb), Arg::Ptr(pc), Arg::U32(n)],
            &mut mem,
        )
        .unwrap();
    let c = mem.read_f32(pc, (n * n) as usize);
    let expected = reference::reference(&a, &b, n as usize);
    // Small integers and halves: exact in f32.
    assert_eq!(
        c.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(),
        expected
    );
}

fn pattern_cfg(words: u64) -> ((u32, u32), (u32, u32)) {
    // Fewer threads than words, so the grid-stride loop goes round several times.
    let _ = words;
    ((3, 1), (32, 1))
}

#[test]
fn fill_writes_the_host_patterns() {
    let words = 1000u64;
    let seed = 0xdead_beef;
    for p in PASSES {
        let mut mem = Memory::default();
        let buf = mem.alloc_u32(&vec![0x5555_5555; words as usize + 1]);
        let (grid, block) = pattern_cfg(words);
        module()
            .launch(
                ptx::PATTERN_FILL,
                grid,
                block,
                &[
                    Arg::Ptr(buf),
                    Arg::U64(words),
                    Arg::U32(p.kind()),
                    Arg::U32(seed),
                ],
                &mut mem,
            )
            .unwrap();
        let got = mem.read_u32(buf, words as usize + 1);
        for (i, w) in got[..words as usize].iter().enumerate() {
            assert_eq!(*w, p.word(i as u64, seed), "{} word {i}", p.name());
        }
        // Nothing written past the end.
        assert_eq!(got[words as usize], 0x5555_5555, "{}", p.name());
    }
}

#[test]
fn check_counts_exactly_the_wrong_words() {
    let words = 777u64;
    let seed = 42;
    for p in PASSES {
        let mut data: Vec<u32> = (0..words).map(|i| p.word(i, seed)).collect();
        let mut mem = Memory::default();
        let clean = mem.alloc_u32(&data);
        data[0] ^= 1;
        data[400] = !data[400];
        data[776] ^= 1 << 31;
        let dirty = mem.alloc_u32(&data);
        for (buf, expected) in [(clean, 0), (dirty, 3)] {
            let errors = mem.alloc(8);
            let (grid, block) = pattern_cfg(words);
            module()
                .launch(
                    ptx::PATTERN_CHECK,
                    grid,
                    block,
                    &[
                        Arg::Ptr(buf),
                        Arg::U64(words),
                        Arg::U32(p.kind()),
                        Arg::U32(seed),
                        Arg::Ptr(errors),
                    ],
                    &mut mem,
                )
                .unwrap();
            assert_eq!(mem.read_u64(errors), expected, "{}", p.name());
        }
    }
}

#[test]
fn check_accepts_only_its_own_kind() {
    // Walking ones checked as walking zeros: every word is wrong.
    let words = 64u64;
    let data: Vec<u32> = (0..words)
        .map(|i| Pattern::WalkingOnes.word(i, 0))
        .collect();
    let mut mem = Memory::default();
    let buf = mem.alloc_u32(&data);
    let errors = mem.alloc(8);
    module()
        .launch(
            ptx::PATTERN_CHECK,
            (1, 1),
            (32, 1),
            &[
                Arg::Ptr(buf),
                Arg::U64(words),
                Arg::U32(Pattern::WalkingZeros.kind()),
                Arg::U32(0),
                Arg::Ptr(errors),
            ],
            &mut mem,
        )
        .unwrap();
    assert_eq!(mem.read_u64(errors), words);
}

#[test]
fn the_emulator_rejects_what_it_does_not_know() {
    // Guards the guard: an unknown instruction must fail, not be skipped.
    let bad = ptx::SOURCE.replace("fma.rn.f32", "fma.rz.f32");
    let m = Module::parse(&bad).unwrap();
    let mut mem = Memory::default();
    let p = mem.alloc(16 * 16 * 4);
    let e = m
        .launch(
            ptx::SGEMM,
            (1, 1),
            (16, 16),
            &[Arg::Ptr(p), Arg::Ptr(p), Arg::Ptr(p), Arg::U32(16)],
            &mut mem,
        )
        .unwrap_err();
    assert!(e.contains("fma.rz.f32 is not emulated"), "{e}");
}

#[test]
fn a_barrier_only_some_threads_reach_is_caught() {
    // Make the tile loop's exit depend on the thread: a divergent barrier, a real bug.
    let bad = ptx::SOURCE.replace(
        "setp.ge.u32 \t%p9, %r18, %r1;",
        "setp.ge.u32 \t%p9, %r18, %r2;",
    );
    assert_ne!(bad, ptx::SOURCE);
    let m = Module::parse(&bad).unwrap();
    let mut mem = Memory::default();
    let p = mem.alloc(32 * 32 * 4);
    let e = m
        .launch(
            ptx::SGEMM,
            (1, 1),
            (16, 16),
            &[Arg::Ptr(p), Arg::Ptr(p), Arg::Ptr(p), Arg::U32(32)],
            &mut mem,
        )
        .unwrap_err();
    assert!(e.contains("bar.sync reached by"), "{e}");
}

#[test]
fn wrong_kernels_fail_these_tests() {
    // Mutants of the real text that a reviewer could plausibly write: each must be caught
    // by the checks above, or those checks prove nothing.
    let mutants = [
        // B read along its column instead of its row.
        (
            "ld.shared.f32 \t%f21, [%r13+64];",
            "ld.shared.f32 \t%f21, [%r13+4];",
        ),
        // k = 15 of every slice reads A's k = 14.
        (
            "ld.shared.f32 \t%f16, [%r12+3840];",
            "ld.shared.f32 \t%f16, [%r12+3584];",
        ),
        // A staged untransposed (As[row][k]).
        (
            "mad.lo.u32 \t%r16, %r21, 64, %r15;",
            "mad.lo.u32 \t%r16, %r15, 16, %r21;",
        ),
        // Row and column swapped in the first store.
        (
            "mad.lo.u32 \t%r14, %r50, %r1, %r54;",
            "mad.lo.u32 \t%r14, %r54, %r1, %r50;",
        ),
        // No barrier between staging and use.
        ("bar.sync \t0;\n\t// k = 0", "// k = 0"),
    ];
    for (from, to) in mutants {
        let src = ptx::SOURCE.replace(from, to);
        assert_ne!(src, ptx::SOURCE, "{from} not found");
        let (c, expected, tol) = sgemm_of(&Module::parse(&src).unwrap(), 40, 3);
        let err = reference::max_abs_error(&c, &expected);
        assert!(err > tol, "mutant {to:?} passed: {err} <= {tol}");
    }
    // The fill's two pattern families swapped.
    let src = ptx::SOURCE.replacen(
        "selp.b32 \t%r10, %r13, %r11, %p2;",
        "selp.b32 \t%r10, %r11, %r13, %p2;",
        1,
    );
    let mut mem = Memory::default();
    let buf = mem.alloc(64 * 4);
    Module::parse(&src)
        .unwrap()
        .launch(
            ptx::PATTERN_FILL,
            (1, 1),
            (32, 1),
            &[
                Arg::Ptr(buf),
                Arg::U64(64),
                Arg::U32(Pattern::WalkingOnes.kind()),
                Arg::U32(0),
            ],
            &mut mem,
        )
        .unwrap();
    let got = mem.read_u32(buf, 64);
    assert!((0..64).any(|i| got[i] != Pattern::WalkingOnes.word(i as u64, 0)));
}
