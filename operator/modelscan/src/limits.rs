//! Budgets and bounds that keep a hostile file from costing unbounded time or memory.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Budgets of a scan. A file that exceeds one is reported (`LimitExceeded`, `Unsafe`) and
/// not analysed further. The defaults fit real models: a large PyTorch `data.pkl` runs a few
/// million opcodes, a safetensors header of a 400B-parameter model is a few MiB, a GGUF
/// tokenizer array holds a few hundred thousand strings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct ScanLimits {
    /// Most pickle opcodes per file (all concatenated pickles together).
    pub pickle_max_opcodes: u64,
    /// Longest time spent walking one file's pickles.
    #[serde(with = "duration_secs")]
    pub pickle_max_duration: Duration,
    /// Most entries in a pickle's memo.
    pub pickle_max_memo: usize,
    /// Most bytes of short strings a pickle walk keeps (the operands `STACK_GLOBAL` may
    /// resolve from), counted as they are pushed.
    pub pickle_max_retained: u64,
    /// Deepest pickle stack (values plus marks).
    pub pickle_max_stack: usize,
    /// Largest safetensors header (the 8-byte length prefix), in bytes.
    pub safetensors_max_header: u64,
    /// Most GGUF tensors.
    pub gguf_max_tensors: u64,
    /// Most GGUF metadata key/value pairs.
    pub gguf_max_kv: u64,
    /// Most elements of one GGUF metadata array.
    pub gguf_max_array_len: u64,
    /// Longest GGUF string value, in bytes.
    pub gguf_max_string: u64,
    /// Most entries in a zip archive.
    pub archive_max_entries: usize,
    /// Largest total uncompressed size of a zip archive's entries, in bytes.
    pub archive_max_total: u64,
    /// Largest uncompressed/compressed ratio of one compressed entry.
    pub archive_max_ratio: u64,
    /// Largest pickle member of an archive, uncompressed, in bytes.
    pub archive_max_pickle: u64,
    /// Most files in a scanned directory tree.
    pub max_files: usize,
    /// Deepest directory nesting below the scanned directory.
    pub max_depth: usize,
}

impl Default for ScanLimits {
    fn default() -> Self {
        Self {
            pickle_max_opcodes: 100_000_000,
            pickle_max_duration: Duration::from_secs(120),
            pickle_max_memo: 1_000_000,
            pickle_max_retained: 64 << 20,
            pickle_max_stack: 1_000_000,
            safetensors_max_header: 100 << 20,
            gguf_max_tensors: 1 << 16,
            gguf_max_kv: 1 << 16,
            gguf_max_array_len: 1 << 24,
            gguf_max_string: 1 << 20,
            archive_max_entries: 1 << 16,
            archive_max_total: 1 << 40,
            archive_max_ratio: 200,
            archive_max_pickle: 1 << 30,
            max_files: 100_000,
            max_depth: 32,
        }
    }
}

mod duration_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}
