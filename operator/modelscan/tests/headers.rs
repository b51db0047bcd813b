//! safetensors and GGUF headers: valid files, and every inconsistency a hostile file can
//! carry.

mod common;

use common::{assert_finding, scan_bytes};
use lotabots_modelscan::{FindingKind::*, Format, ScanLimits, Verdict, safetensors::check_header};

fn limits() -> ScanLimits {
    ScanLimits::default()
}

/// A safetensors file from a header JSON and the length of its data section.
fn st(header: &str, data_len: usize) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend(std::iter::repeat_n(0u8, data_len));
    v
}

#[test]
fn valid_safetensors() {
    let h = r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"F16","shape":[2,2],"data_offsets":[24,32]},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"s":{"dtype":"I64","shape":[],"data_offsets":[32,40]},"e":{"dtype":"BF16","shape":[0,5],"data_offsets":[40,40]},"f4":{"dtype":"F4","shape":[4],"data_offsets":[40,42]}}  "#;
    let r = scan_bytes("m.safetensors", &st(h, 42), &limits());
    assert_eq!(
        (r.format, r.verdict),
        (Format::Safetensors, Verdict::Safe),
        "{r:#?}"
    );
    let header = check_header(h.as_bytes(), 8 + h.len() as u64, 42).unwrap();
    assert_eq!(header.tensors.len(), 5);
    assert_eq!(header.metadata["format"], "pt");
    // Detected by content too, without the extension.
    assert_eq!(
        scan_bytes("weights", &st(h, 42), &limits()).format,
        Format::Safetensors
    );
}

#[test]
fn gap_overlap_and_trailing_bytes() {
    let gap = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[8,12]}}"#;
    let r = scan_bytes("m.safetensors", &st(gap, 12), &limits());
    let at = assert_finding(
        &r,
        Verdict::Unsafe,
        Malformed,
        "gap of 4 bytes before tensor \"b\"",
    );
    assert_eq!(at, Some(8 + gap.len() as u64 + 4));

    let overlap = r#"{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}"#;
    let r = scan_bytes("m.safetensors", &st(overlap, 8), &limits());
    assert_finding(
        &r,
        Verdict::Unsafe,
        Malformed,
        "tensor \"b\" overlaps \"a\"",
    );

    let one = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
    let r = scan_bytes("m.safetensors", &st(one, 6), &limits());
    assert_finding(&r, Verdict::Unsafe, Malformed, "2 trailing bytes");
    let r = scan_bytes("m.safetensors", &st(one, 3), &limits());
    assert_finding(&r, Verdict::Unsafe, Malformed, "past the end of the file");
}

#[test]
fn dtype_shape_and_offset_consistency() {
    let cases = [
        (
            r#"{"a":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}}"#,
            "unknown dtype \"F33\"",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
            "F32 [2] needs 8",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#,
            "hold -4 bytes",
        ),
        (
            r#"{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}"#,
            "not a whole number of bytes",
        ),
        (
            r#"{"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#,
            "fits in 64 bits",
        ),
    ];
    for (h, text) in cases {
        let r = scan_bytes("m.safetensors", &st(h, 4), &limits());
        assert_finding(&r, Verdict::Unsafe, Malformed, text);
    }
}

#[test]
fn hostile_headers() {
    // Header length far beyond the bound: refused before any allocation.
    let mut huge = (u64::MAX - 7).to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    let r = scan_bytes("m.safetensors", &huge, &limits());
    assert_finding(
        &r,
        Verdict::Unsafe,
        LimitExceeded,
        "exceeds the limit of 104857600 bytes",
    );
    // Within the bound but longer than the file.
    let mut long = 1000u64.to_le_bytes().to_vec();
    long.extend_from_slice(b"{}");
    let r = scan_bytes("m.safetensors", &long, &limits());
    assert_finding(&r, Verdict::Unsafe, Malformed, "runs past the end");
    let r = scan_bytes("m.safetensors", b"\x01\0\0", &limits());
    assert_finding(&r, Verdict::Unsafe, Malformed, "no 8-byte header length");
    for (h, text) in [
        (
            r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}"#,
            "not a valid safetensors JSON",
        ),
        (r#"[1,2]"#, "a JSON object of tensors"),
        (
            r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#,
            "duplicate tensor \"a\"",
        ),
        (r#"{"__metadata__":{"n":1}}"#, "invalid type: integer"),
        (
            r#"{"__metadata__":{"k":"a","k":"b"}}"#,
            "duplicate __metadata__ key",
        ),
        (
            r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"code":"x"}}"#,
            "unknown field `code`",
        ),
        (
            r#"{"a":{"dtype":"U8","shape":[[[[1]]]],"data_offsets":[0,1]}}"#,
            "invalid type: sequence",
        ),
        ("{\"a\":\"\u{0}\"}", "not a valid"),
    ] {
        let r = scan_bytes("m.safetensors", &st(h, 1), &limits());
        assert_finding(&r, Verdict::Unsafe, Malformed, text);
    }
}

/// Writes GGUF pieces little-endian.
#[derive(Default)]
struct Gguf(Vec<u8>);

impl Gguf {
    fn header(version: u32, tensors: u64, kvs: u64) -> Self {
        let mut g = Self(b"GGUF".to_vec());
        g.u32(version).u64(tensors).u64(kvs);
        g
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn kv_str(&mut self, k: &str, v: &str) -> &mut Self {
        self.str(k).u32(8).str(v)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    fn data(&mut self, alignment: usize, len: usize) -> Vec<u8> {
        let mut v = self.0.clone();
        v.resize(v.len().next_multiple_of(alignment) + len, 0);
        v
    }
}

fn valid_gguf() -> Gguf {
    let mut g = Gguf::header(3, 2, 4);
    g.kv_str("general.architecture", "llama")
        .str("general.alignment")
        .u32(4)
        .u32(64)
        .str("tokenizer.ggml.tokens")
        .u32(9)
        .u32(8)
        .u64(2)
        .str("a")
        .str("b")
        .str("llama.block_count")
        .u32(4)
        .u32(2);
    // 32 F32 values (128 bytes) at 0, one Q8_0 block of 32 (34 bytes) at 128.
    g.tensor("tok_embd.weight", &[32], 0, 0)
        .tensor("blk.0.attn_q.weight", &[32], 8, 128);
    g
}

#[test]
fn valid_gguf_is_safe() {
    let bytes = valid_gguf().data(64, 128 + 34);
    let r = scan_bytes("m.gguf", &bytes, &limits());
    assert_eq!(
        (r.format, r.verdict),
        (Format::Gguf, Verdict::Safe),
        "{r:#?}"
    );
}

#[test]
fn truncated_gguf() {
    let bytes = valid_gguf().data(64, 128 + 34);
    for cut in [3, 10, 30, 60, 120, bytes.len() - 200] {
        let r = scan_bytes("m.gguf", &bytes[..cut.min(bytes.len() - 1)], &limits());
        assert_eq!(r.verdict, Verdict::Unsafe, "cut at {cut}: {r:#?}");
    }
    // Tensor data missing at the end.
    let r = scan_bytes("m.gguf", &bytes[..bytes.len() - 1], &limits());
    assert_finding(
        &r,
        Verdict::Unsafe,
        Malformed,
        "runs past the end of the file",
    );
}

#[test]
fn hostile_gguf_counts_and_lengths() {
    let r = scan_bytes("m.gguf", &Gguf::header(3, u64::MAX, 0).0, &limits());
    assert_finding(
        &r,
        Verdict::Unsafe,
        LimitExceeded,
        "tensor count 18446744073709551615",
    );
    let r = scan_bytes("m.gguf", &Gguf::header(3, 0, 1 << 40).0, &limits());
    assert_finding(&r, Verdict::Unsafe, LimitExceeded, "metadata count");
    let mut g = Gguf::header(3, 0, 1);
    g.u64(1 << 20);
    assert_finding(
        &scan_bytes("m.gguf", &g.0, &limits()),
        Verdict::Unsafe,
        LimitExceeded,
        "metadata key of 1048576 bytes",
    );
    let mut g = Gguf::header(3, 0, 1);
    g.u64(1000).0.extend_from_slice(b"short");
    assert_finding(
        &scan_bytes("m.gguf", &g.0, &limits()),
        Verdict::Unsafe,
        Malformed,
        "runs past the end",
    );
    let mut g = Gguf::header(3, 0, 1);
    g.str("k").u32(8).u64(u64::MAX);
    assert_finding(
        &scan_bytes("m.gguf", &g.0, &limits()),
        Verdict::Unsafe,
        LimitExceeded,
        "string value",
    );
    let mut g = Gguf::header(3, 0, 1);
    g.str("k").u32(9).u32(0).u64(1 << 40);
    assert_finding(
        &scan_bytes("m.gguf", &g.0, &limits()),
        Verdict::Unsafe,
        LimitExceeded,
        "array length",
    );
    let mut g = Gguf::header(3, 0, 1);
    g.str("k").u32(9).u32(6).u64(1 << 20);
    assert_finding(
        &scan_bytes("m.gguf", &g.0, &limits()),
        Verdict::Unsafe,
        Malformed,
        "array of 4194304 bytes runs past",
    );
}

#[test]
fn invalid_gguf_values() {
    let r = scan_bytes("m.gguf", &Gguf::header(1, 0, 0).0, &limits());
    assert_finding(&r, Verdict::Unsafe, Malformed, "version 1 is not supported");
    let mut g = Gguf::header(3, 0, 1);
    g.str("k").u32(13).u32(0);
    assert_finding(
        &scan_bytes("m.gguf", &g.0, &limits()),
        Verdict::Unsafe,
        Malformed,
        "unknown value type 13",
    );
    let mut g = Gguf::header(3, 0, 1);
    g.str("k").u32(7).0.push(2);
    assert_finding(
        &scan_bytes("m.gguf", &g.0, &limits()),
        Verdict::Unsafe,
        Malformed,
        "bool value 2",
    );
    let mut g = Gguf::header(3, 0, 1);
    g.str("k").u32(9).u32(9).u64(1);
    assert_finding(
        &scan_bytes("m.gguf", &g.0, &limits()),
        Verdict::Unsafe,
        Malformed,
        "nested arrays",
    );
    let mut g = Gguf::header(3, 0, 2);
    g.kv_str("k", "a").kv_str("k", "b");
    assert_finding(
        &scan_bytes("m.gguf", &g.0, &limits()),
        Verdict::Unsafe,
        Malformed,
        "duplicate metadata key",
    );
    for (tensor, text) in [
        (("t", &[32u64][..], 99u32, 0u64), "unknown ggml type 99"),
        (("t", &[32], 0, 3), "not aligned"),
        (("t", &[33], 8, 0), "not a multiple of the Q8_0 block size"),
        (("t", &[1, 1, 1, 1, 1], 0, 0), "5 dimensions"),
        (("t", &[u64::MAX, 2], 0, 0), "overflows"),
    ] {
        let mut g = Gguf::header(3, 1, 0);
        g.tensor(tensor.0, tensor.1, tensor.2, tensor.3);
        let r = scan_bytes("m.gguf", &g.data(32, 4096), &limits());
        assert_finding(&r, Verdict::Unsafe, Malformed, text);
    }
    let mut g = Gguf::header(3, 2, 0);
    g.tensor("a", &[32], 0, 0).tensor("b", &[32], 0, 64);
    let r = scan_bytes("m.gguf", &g.data(32, 4096), &limits());
    assert_finding(
        &r,
        Verdict::Unsafe,
        Malformed,
        "tensor \"b\" overlaps \"a\"",
    );
}
