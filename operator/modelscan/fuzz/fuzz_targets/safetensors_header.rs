//! Arbitrary bytes → `safetensors::scan_safetensors` (as a whole file) and
//! `safetensors::check_header` (as a bare header over a data section whose length the
//! first byte picks).
//!
//! Invariants: never panics; a header that is accepted describes tensors with known dtypes
//! whose byte ranges, sorted, tile the data section exactly — re-checked here independently
//! of the parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lotabots_modelscan::{
    ScanLimits,
    safetensors::{Header, check_header, scan_safetensors},
};

fn assert_tiles(header: &Header, data_len: u64) {
    let mut spans: Vec<_> = header.tensors.values().map(|t| t.data_offsets).collect();
    spans.sort_unstable();
    let mut cursor = 0;
    for [start, end] in spans {
        assert_eq!(start, cursor, "accepted header with a gap or overlap");
        assert!(end >= start);
        cursor = end;
    }
    assert_eq!(
        cursor, data_len,
        "accepted header that does not cover the data"
    );
}

fuzz_target!(|data: &[u8]| {
    let limits = ScanLimits {
        safetensors_max_header: 1 << 20,
        ..ScanLimits::default()
    };
    let issues = scan_safetensors(data, data.len() as u64, &limits);
    for issue in &issues {
        assert!(!issue.message.is_empty());
    }
    if issues.is_empty() {
        let n = u64::from_le_bytes(data[..8].try_into().unwrap());
        let json = &data[8..8 + n as usize];
        let header = check_header(json, 8 + n, data.len() as u64 - 8 - n)
            .expect("scan and check_header agree");
        assert_tiles(&header, data.len() as u64 - 8 - n);
    }
    if let Some((&first, json)) = data.split_first() {
        let data_len = u64::from(first) * 4;
        if let Ok(header) = check_header(json, 8, data_len) {
            assert_tiles(&header, data_len);
        }
    }
});
