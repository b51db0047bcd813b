//! Memory test patterns. The GPU kernels (`kernels/selftest.ptx`) compute the same words;
//! the host functions here run them in the simulated mode and pin their definition down.

/// One pattern pass: `kind` is passed to the kernels as is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// A single set bit walking through the word: catches bits stuck at 0 and coupled bits.
    WalkingOnes = 0,
    /// A single clear bit walking through the word: catches bits stuck at 1.
    WalkingZeros = 1,
    /// Each word holds its own index: catches address lines that alias two words.
    AddressAsData = 2,
    /// The inverse of [`AddressAsData`](Self::AddressAsData): every bit written both ways.
    InverseAddress = 3,
}

/// The passes, in the order they run.
pub const PASSES: [Pattern; 4] = [
    Pattern::WalkingOnes,
    Pattern::WalkingZeros,
    Pattern::AddressAsData,
    Pattern::InverseAddress,
];

impl Pattern {
    /// The kernels' `kind` argument.
    pub fn kind(self) -> u32 {
        self as u32
    }

    /// A name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::WalkingOnes => "walking ones",
            Pattern::WalkingZeros => "walking zeros",
            Pattern::AddressAsData => "address as data",
            Pattern::InverseAddress => "inverse address",
        }
    }

    /// The word expected at 32-bit word index `index`. `seed` (from the nonce) shifts the
    /// patterns so that words left over from an earlier run do not read back as correct.
    pub fn word(self, index: u64, seed: u32) -> u32 {
        // Truncations intended: the kernels split the 64-bit index the same way.
        let lo = index as u32;
        let hi = (index >> 32) as u32;
        let kind = self.kind();
        let base = if kind & 2 == 0 {
            1u32 << (lo.wrapping_add(seed) & 31)
        } else {
            lo ^ hi ^ seed
        };
        if kind & 1 == 1 { !base } else { base }
    }
}

/// A pattern seed from the nonce (its first four bytes).
pub fn seed(nonce: &[u8; 32]) -> u32 {
    u32::from_le_bytes([nonce[0], nonce[1], nonce[2], nonce[3]])
}

/// Writes `pattern` over `buf` (the host version of `lotabots_pattern_fill`).
pub fn fill(buf: &mut [u32], pattern: Pattern, seed: u32) {
    for (i, w) in buf.iter_mut().enumerate() {
        *w = pattern.word(i as u64, seed);
    }
}

/// Counts the words of `buf` that differ from `pattern` (the host version of
/// `lotabots_pattern_check`).
pub fn count_errors(buf: &[u32], pattern: Pattern, seed: u32) -> u64 {
    buf.iter()
        .enumerate()
        .filter(|&(i, &w)| w != pattern.word(i as u64, seed))
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walking_ones_set_exactly_one_bit_that_moves() {
        let words: Vec<u32> = (0..32).map(|i| Pattern::WalkingOnes.word(i, 0)).collect();
        assert!(words.iter().all(|w| w.count_ones() == 1));
        assert_eq!(words[0], 1);
        assert_eq!(words[31], 1 << 31);
        assert_eq!(Pattern::WalkingOnes.word(32, 0), 1);
        // The seed rotates the start.
        assert_eq!(Pattern::WalkingOnes.word(0, 3), 1 << 3);
    }

    #[test]
    fn inverses_are_bitwise_complements() {
        for i in [0u64, 1, 31, 1 << 33, u64::MAX] {
            assert_eq!(
                Pattern::WalkingZeros.word(i, 9),
                !Pattern::WalkingOnes.word(i, 9)
            );
            assert_eq!(
                Pattern::InverseAddress.word(i, 9),
                !Pattern::AddressAsData.word(i, 9)
            );
        }
    }

    #[test]
    fn address_as_data_folds_the_high_half() {
        // Words 2^32 apart must differ, or an alias across 16 GiB would go unseen.
        assert_eq!(Pattern::AddressAsData.word(5, 0), 5);
        assert_eq!(Pattern::AddressAsData.word((1 << 32) + 5, 0), 4);
        assert_eq!(Pattern::AddressAsData.word(5, 0xff), 5 ^ 0xff);
    }

    #[test]
    fn host_fill_then_check_finds_exactly_the_corrupted_words() {
        let mut buf = vec![0u32; 4096];
        for p in PASSES {
            fill(&mut buf, p, 77);
            assert_eq!(count_errors(&buf, p, 77), 0, "{}", p.name());
            buf[100] ^= 1 << 5;
            buf[4000] = !buf[4000];
            assert_eq!(count_errors(&buf, p, 77), 2, "{}", p.name());
            // Data written for one seed does not pass for another.
            fill(&mut buf, p, 77);
            assert_eq!(count_errors(&buf, p, 78), 4096, "{}", p.name());
        }
    }

    #[test]
    fn seed_reads_the_nonce_little_endian() {
        let mut nonce = [0u8; 32];
        nonce[..4].copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(seed(&nonce), 0x0403_0201);
    }
}
