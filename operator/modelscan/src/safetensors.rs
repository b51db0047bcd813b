//! safetensors: an 8-byte little-endian header length, a JSON header, then the tensor data.
//!
//! The header is checked the way a strict loader would: bounded length, valid UTF-8 JSON
//! object without duplicate keys, `__metadata__` a map of strings, every tensor with a
//! known dtype, a shape whose size matches its `data_offsets`, and the offsets, sorted,
//! covering the data section exactly — no gap, no overlap, no trailing bytes. Only the
//! header is read; the data is never loaded.

use std::{collections::BTreeMap, fmt, io::Read};

use serde::{
    Deserialize, Deserializer,
    de::{self, MapAccess, Visitor},
};

use crate::{FindingKind, Issue, ScanLimits};

/// Bits per element of every dtype the safetensors format defines.
const DTYPES: &[(&str, u64)] = &[
    ("BOOL", 8),
    ("U8", 8),
    ("I8", 8),
    ("F8_E5M2", 8),
    ("F8_E4M3", 8),
    ("F8_E8M0", 8),
    ("I16", 16),
    ("U16", 16),
    ("F16", 16),
    ("BF16", 16),
    ("I32", 32),
    ("U32", 32),
    ("F32", 32),
    ("C64", 64),
    ("F64", 64),
    ("I64", 64),
    ("U64", 64),
    ("F4", 4),
    ("F6_E2M3", 6),
    ("F6_E3M2", 6),
];

/// One tensor's entry in the header.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TensorInfo {
    /// Element type, e.g. `F16`.
    pub dtype: String,
    /// Dimensions; empty for a scalar.
    pub shape: Vec<u64>,
    /// Start and end of the tensor's bytes, relative to the data section.
    pub data_offsets: [u64; 2],
}

/// A parsed header: the tensors by name, and the free-form metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// Tensors by name.
    pub tensors: BTreeMap<String, TensorInfo>,
    /// `__metadata__`: string keys and string values only.
    pub metadata: BTreeMap<String, String>,
}

impl<'de> Deserialize<'de> for Header {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct HeaderVisitor;
        impl<'de> Visitor<'de> for HeaderVisitor {
            type Value = Header;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object of tensors")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Header, A::Error> {
                let mut h = Header::default();
                let mut seen_metadata = false;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "__metadata__" {
                        if std::mem::replace(&mut seen_metadata, true) {
                            return Err(de::Error::custom("duplicate key \"__metadata__\""));
                        }
                        h.metadata = map.next_value::<StringMap>()?.0;
                    } else {
                        let info: TensorInfo = map
                            .next_value()
                            .map_err(|e| de::Error::custom(format!("tensor {key:?}: {e}")))?;
                        if h.tensors.insert(key.clone(), info).is_some() {
                            return Err(de::Error::custom(format!("duplicate tensor {key:?}")));
                        }
                    }
                }
                Ok(h)
            }
        }
        d.deserialize_map(HeaderVisitor)
    }
}

/// A JSON object of strings that rejects duplicate keys (serde's map would keep the last).
struct StringMap(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for StringMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StringMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("__metadata__ as an object of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StringMap, A::Error> {
                let mut m = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    if m.contains_key(&k) {
                        return Err(de::Error::custom(format!(
                            "duplicate __metadata__ key {k:?}"
                        )));
                    }
                    m.insert(k, v);
                }
                Ok(StringMap(m))
            }
        }
        d.deserialize_map(V)
    }
}

/// Parses the JSON header and checks it against a data section of `data_len` bytes.
/// `data_start` (8 + header length) only makes the offsets in the issues absolute.
pub fn check_header(json: &[u8], data_start: u64, data_len: u64) -> Result<Header, Vec<Issue>> {
    let malformed =
        |offset: u64, msg: String| Issue::new(FindingKind::Malformed, Some(offset), msg);
    // serde_json refuses nesting deeper than 128, and the typed visitor rejects any value
    // that is not where a string, number or list of numbers belongs.
    let header: Header = serde_json::from_slice(json).map_err(|e| {
        vec![malformed(
            8,
            format!("header is not a valid safetensors JSON object: {e}"),
        )]
    })?;
    let mut issues = Vec::new();
    let mut spans = Vec::with_capacity(header.tensors.len());
    for (name, t) in &header.tensors {
        let Some(&(_, bits)) = DTYPES.iter().find(|(d, _)| *d == t.dtype) else {
            issues.push(malformed(
                8,
                format!("tensor {name:?} has unknown dtype {:?}", t.dtype),
            ));
            continue;
        };
        let [start, end] = t.data_offsets;
        let expected = t
            .shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .and_then(|n| n.checked_mul(bits))
            .filter(|b| b % 8 == 0)
            .map(|b| b / 8);
        let Some(expected) = expected else {
            issues.push(malformed(
                8,
                format!(
                    "tensor {name:?}: shape {:?} of {} is not a whole number of bytes that fits in 64 bits",
                    t.shape, t.dtype
                ),
            ));
            continue;
        };
        if end < start || end - start != expected {
            issues.push(malformed(
                data_start.saturating_add(start),
                format!(
                    "tensor {name:?}: data_offsets [{start}, {end}] hold {} bytes, but {} {:?} needs {expected}",
                    i128::from(end) - i128::from(start),
                    t.dtype,
                    t.shape
                ),
            ));
            continue;
        }
        spans.push((start, end, name.as_str()));
    }
    spans.sort_unstable();
    let mut cursor = 0u64;
    let mut previous: Option<&str> = None;
    for &(start, end, name) in &spans {
        if start > cursor {
            issues.push(malformed(
                data_start.saturating_add(cursor),
                format!("gap of {} bytes before tensor {name:?}", start - cursor),
            ));
        } else if start < cursor {
            issues.push(malformed(
                data_start.saturating_add(start),
                format!(
                    "tensor {name:?} overlaps {:?}",
                    previous.unwrap_or_default()
                ),
            ));
        }
        cursor = cursor.max(end);
        previous = Some(name);
    }
    if cursor < data_len {
        issues.push(malformed(
            data_start.saturating_add(cursor),
            format!("{} trailing bytes after the last tensor", data_len - cursor),
        ));
    } else if cursor > data_len {
        issues.push(malformed(
            data_start.saturating_add(data_len),
            format!(
                "tensors end at data offset {cursor}, past the end of the file ({data_len} data bytes)"
            ),
        ));
    }
    if issues.is_empty() {
        Ok(header)
    } else {
        Err(issues)
    }
}

/// Checks a safetensors stream of `file_len` bytes, reading only its header.
pub fn scan_safetensors<R: Read>(mut reader: R, file_len: u64, limits: &ScanLimits) -> Vec<Issue> {
    let mut len = [0; 8];
    if let Err(e) = reader.read_exact(&mut len) {
        return vec![Issue::new(
            FindingKind::Malformed,
            Some(0),
            format!("truncated: no 8-byte header length ({e})"),
        )];
    }
    let header_len = u64::from_le_bytes(len);
    if header_len > limits.safetensors_max_header {
        return vec![Issue::new(
            FindingKind::LimitExceeded,
            Some(0),
            format!(
                "header length {header_len} exceeds the limit of {} bytes",
                limits.safetensors_max_header
            ),
        )];
    }
    let Some(data_len) = file_len.checked_sub(8 + header_len) else {
        return vec![Issue::new(
            FindingKind::Malformed,
            Some(0),
            format!("header length {header_len} runs past the end of the {file_len}-byte file"),
        )];
    };
    let mut json = Vec::new();
    match reader.by_ref().take(header_len).read_to_end(&mut json) {
        Ok(n) if n as u64 == header_len => {}
        Ok(n) => {
            return vec![Issue::new(
                FindingKind::Malformed,
                Some(8 + n as u64),
                "truncated header",
            )];
        }
        Err(e) => {
            return vec![Issue::new(
                FindingKind::NotScanned,
                Some(8),
                format!("read error: {e}"),
            )];
        }
    }
    match check_header(&json, 8 + header_len, data_len) {
        Ok(_) => Vec::new(),
        Err(issues) => issues,
    }
}
