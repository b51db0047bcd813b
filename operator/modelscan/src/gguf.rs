//! GGUF (llama.cpp): magic, version, metadata key/values and tensor infos checked for
//! sanity, every count and length bounded by [`ScanLimits`] and by the bytes the file still
//! has, so a hostile header costs no more than reading it. Tensor data is skipped.

use std::{
    collections::HashSet,
    hash::{DefaultHasher, Hash, Hasher},
    io::Read,
};

use crate::{
    FindingKind, Issue, ScanLimits,
    stream::{Input, ReadError},
};

const MAGIC: &[u8; 4] = b"GGUF";
/// Longest metadata key, in bytes (the specification's bound).
const MAX_KEY: u64 = 65_535;
/// Longest tensor name, in bytes (ggml's `GGML_MAX_NAME`).
const MAX_TENSOR_NAME: u64 = 64;
/// Most dimensions of a tensor (ggml's `GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;
const DEFAULT_ALIGNMENT: u64 = 32;

/// `(ggml type id, name, elements per block, bytes per block)` of the tensor types ggml
/// reads today (ids of removed types are absent, so they are rejected).
const GGML_TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
];

/// Metadata value types.
const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

/// Why the header is not acceptable: where, and what.
struct Bad(FindingKind, u64, String);

type Res<T> = Result<T, Bad>;

struct Parser<'l, R> {
    input: Input<R>,
    file_len: u64,
    limits: &'l ScanLimits,
}

/// Checks a GGUF stream of `file_len` bytes: the header, metadata and tensor infos.
pub fn scan_gguf<R: Read>(reader: R, file_len: u64, limits: &ScanLimits) -> Vec<Issue> {
    let mut p = Parser {
        input: Input::new(reader),
        file_len,
        limits,
    };
    match p.check() {
        Ok(()) => Vec::new(),
        Err(Bad(kind, at, msg)) => vec![Issue::new(kind, Some(at), msg)],
    }
}

fn bad<T>(at: u64, msg: impl Into<String>) -> Res<T> {
    Err(Bad(FindingKind::Malformed, at, msg.into()))
}

fn ggml_type(id: u32) -> Option<&'static (u32, &'static str, u64, u64)> {
    GGML_TYPES.iter().find(|t| t.0 == id)
}

fn hash_of(s: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

impl<R: Read> Parser<'_, R> {
    fn remaining(&self) -> u64 {
        self.file_len.saturating_sub(self.input.pos())
    }

    fn read_err(&self, e: ReadError) -> Bad {
        let at = self.input.pos();
        match e {
            ReadError::Io(e) => Bad(FindingKind::NotScanned, at, format!("read error: {e}")),
            _ => Bad(FindingKind::Malformed, at, "truncated GGUF header".into()),
        }
    }

    fn arr<const N: usize>(&mut self) -> Res<[u8; N]> {
        self.input.array::<N>().map_err(|e| self.read_err(e))
    }

    fn u32(&mut self) -> Res<u32> {
        Ok(u32::from_le_bytes(self.arr()?))
    }

    fn u64(&mut self) -> Res<u64> {
        Ok(u64::from_le_bytes(self.arr()?))
    }

    /// Skips `n` bytes that the file must still have.
    fn skip(&mut self, n: u64, what: &str) -> Res<()> {
        let at = self.input.pos();
        if n > self.remaining() {
            return bad(
                at,
                format!("truncated: {what} of {n} bytes runs past the end of the file"),
            );
        }
        self.input.skip(n).map_err(|e| self.read_err(e))
    }

    /// A string's length, checked against `max` and the rest of the file.
    fn string_len(&mut self, max: u64, what: &str) -> Res<u64> {
        let at = self.input.pos();
        let n = self.u64()?;
        if n > max {
            return Err(Bad(
                FindingKind::LimitExceeded,
                at,
                format!("{what} of {n} bytes exceeds the limit of {max}"),
            ));
        }
        if n > self.remaining() {
            return bad(
                at,
                format!("truncated: {what} of {n} bytes runs past the end of the file"),
            );
        }
        Ok(n)
    }

    fn string(&mut self, max: u64, what: &str) -> Res<Vec<u8>> {
        let n = self.string_len(max, what)?;
        self.input.bytes(n as usize).map_err(|e| self.read_err(e))
    }

    fn check(&mut self) -> Res<()> {
        if &self.arr::<4>()? != MAGIC {
            return bad(0, "not a GGUF file: bad magic");
        }
        let version = self.u32()?;
        if !matches!(version, 2 | 3) {
            return bad(
                4,
                format!("GGUF version {version} is not supported (2 or 3)"),
            );
        }
        let tensors = self.count(self.limits.gguf_max_tensors, "tensor count")?;
        let kvs = self.count(self.limits.gguf_max_kv, "metadata count")?;
        let alignment = self.metadata(kvs)?;
        let infos = self.tensor_infos(tensors, alignment)?;
        self.check_data(infos, alignment)
    }

    fn count(&mut self, max: u64, what: &str) -> Res<u64> {
        let at = self.input.pos();
        let n = self.u64()?;
        if n > max {
            return Err(Bad(
                FindingKind::LimitExceeded,
                at,
                format!("{what} {n} exceeds the limit of {max}"),
            ));
        }
        Ok(n)
    }

    /// Walks the key/values; returns `general.alignment`.
    fn metadata(&mut self, kvs: u64) -> Res<u64> {
        let mut alignment = DEFAULT_ALIGNMENT;
        let mut keys = HashSet::new();
        for _ in 0..kvs {
            let at = self.input.pos();
            let key = self.string(MAX_KEY, "metadata key")?;
            if key.is_empty() || !key.is_ascii() {
                return bad(at, "metadata key is empty or not ASCII");
            }
            let key_text = String::from_utf8_lossy(&key).into_owned();
            if !keys.insert(hash_of(&key)) {
                return bad(at, format!("duplicate metadata key {key_text:?}"));
            }
            let vat = self.input.pos();
            let ty = self.u32()?;
            if key_text == "general.alignment" {
                if ty != T_U32 {
                    return bad(vat, "general.alignment is not a uint32");
                }
                let a = u64::from(self.u32()?);
                if a == 0 || a % 8 != 0 {
                    return bad(
                        vat,
                        format!("general.alignment {a} is not a positive multiple of 8"),
                    );
                }
                alignment = a;
            } else {
                self.value(ty, vat, &key_text, true)?;
            }
        }
        Ok(alignment)
    }

    fn value(&mut self, ty: u32, at: u64, key: &str, top: bool) -> Res<()> {
        match ty {
            T_U8 | T_I8 => {
                self.arr::<1>()?;
            }
            T_BOOL => {
                let b = self.arr::<1>()?[0];
                if b > 1 {
                    return bad(at, format!("{key}: bool value {b} is neither 0 nor 1"));
                }
            }
            T_U16 | T_I16 => {
                self.arr::<2>()?;
            }
            T_U32 | T_I32 | T_F32 => {
                self.arr::<4>()?;
            }
            T_U64 | T_I64 | T_F64 => {
                self.arr::<8>()?;
            }
            T_STRING => {
                let n = self.string_len(self.limits.gguf_max_string, "string value")?;
                self.skip(n, "string value")?;
            }
            T_ARRAY if top => {
                let elem_at = self.input.pos();
                let elem = self.u32()?;
                let len = self.count(self.limits.gguf_max_array_len, "array length")?;
                let fixed = match elem {
                    T_U8 | T_I8 => Some(1),
                    T_U16 | T_I16 => Some(2),
                    T_U32 | T_I32 | T_F32 => Some(4),
                    T_U64 | T_I64 | T_F64 => Some(8),
                    _ => None,
                };
                if let Some(size) = fixed {
                    self.skip(len * size, "array")?;
                } else if matches!(elem, T_STRING | T_BOOL) {
                    for _ in 0..len {
                        self.value(elem, elem_at, key, false)?;
                    }
                } else if elem == T_ARRAY {
                    return bad(elem_at, format!("{key}: nested arrays are not supported"));
                } else {
                    return bad(elem_at, format!("{key}: unknown array element type {elem}"));
                }
            }
            _ => return bad(at, format!("{key}: unknown value type {ty}")),
        }
        Ok(())
    }

    /// Reads the tensor infos: `(name, offset, size)` each.
    fn tensor_infos(&mut self, n: u64, alignment: u64) -> Res<Vec<(String, u64, u64)>> {
        let mut infos = Vec::new();
        let mut names = HashSet::new();
        for _ in 0..n {
            let at = self.input.pos();
            let raw = self.string(MAX_TENSOR_NAME, "tensor name")?;
            let name = String::from_utf8(raw).map_err(|_| {
                Bad(
                    FindingKind::Malformed,
                    at,
                    "tensor name is not UTF-8".into(),
                )
            })?;
            if !names.insert(name.clone()) {
                return bad(at, format!("duplicate tensor {name:?}"));
            }
            let dims_at = self.input.pos();
            let n_dims = self.u32()?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return bad(
                    dims_at,
                    format!("tensor {name:?} has {n_dims} dimensions (1 to {MAX_DIMS})"),
                );
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(self.u64()?);
            }
            let type_at = self.input.pos();
            let ty = self.u32()?;
            let Some(&(_, tname, block, block_bytes)) = ggml_type(ty) else {
                return bad(
                    type_at,
                    format!("tensor {name:?} has unknown ggml type {ty}"),
                );
            };
            let offset = self.u64()?;
            if offset % alignment != 0 {
                return bad(
                    type_at + 4,
                    format!("tensor {name:?}: offset {offset} is not aligned to {alignment}"),
                );
            }
            if dims[0] % block != 0 {
                return bad(
                    dims_at,
                    format!(
                        "tensor {name:?}: first dimension {} is not a multiple of the {tname} block size {block}",
                        dims[0]
                    ),
                );
            }
            let size = dims
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d))
                .and_then(|n| (n / block).checked_mul(block_bytes))
                .ok_or_else(|| {
                    Bad(
                        FindingKind::Malformed,
                        dims_at,
                        format!("tensor {name:?}: size of {dims:?} overflows"),
                    )
                })?;
            infos.push((name, offset, size));
        }
        Ok(infos)
    }

    /// Every tensor lies inside the data section, and none overlaps another.
    fn check_data(&mut self, mut infos: Vec<(String, u64, u64)>, alignment: u64) -> Res<()> {
        let data_start = self.input.pos().next_multiple_of(alignment);
        let data_len = self.file_len.saturating_sub(data_start);
        infos.sort_by_key(|(_, offset, _)| *offset);
        let mut end_of_previous = 0u64;
        let mut previous = "";
        for (name, offset, size) in &infos {
            if *offset < end_of_previous {
                return bad(
                    data_start + offset,
                    format!("tensor {name:?} overlaps {previous:?}"),
                );
            }
            let end = offset.checked_add(*size).filter(|&e| e <= data_len).ok_or_else(|| {
                Bad(
                    FindingKind::Malformed,
                    data_start.saturating_add(*offset),
                    format!("tensor {name:?} ({size} bytes at data offset {offset}) runs past the end of the file"),
                )
            })?;
            end_of_previous = end;
            previous = name;
        }
        Ok(())
    }
}
