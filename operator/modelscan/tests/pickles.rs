//! Hostile and benign pickles, raw and inside PyTorch zip archives.

mod common;

use std::{io::Write, time::Duration};

use common::{assert_finding, fixture, scan_bytes};
use lotabots_modelscan::{
    FindingKind::*, Format, PickleHandling, ScanLimits, Verdict, pickle::scan_pickle, scan_file,
};
use zip::{CompressionMethod, ZipWriter, write::SimpleFileOptions};

fn limits() -> ScanLimits {
    ScanLimits::default()
}

#[test]
fn pytorch_state_dict_pickle_is_safe() {
    let r = scan_file(&fixture("state_dict_proto4.pkl"), &limits()).unwrap();
    assert_eq!(
        (r.format, r.verdict),
        (Format::Pickle, Verdict::Safe),
        "{r:#?}"
    );
    let globals: Vec<_> = r.globals.iter().map(String::as_str).collect();
    assert_eq!(
        globals,
        [
            "collections.OrderedDict",
            "torch.FloatStorage",
            "torch._utils._rebuild_tensor_v2"
        ]
    );
}

#[test]
fn every_protocol_and_opcode_of_plain_data_is_understood() {
    for protocol in 0..=5 {
        let r = scan_file(&fixture(&format!("assorted_p{protocol}.pkl")), &limits()).unwrap();
        assert_eq!(
            (r.format, r.verdict),
            (Format::Pickle, Verdict::Safe),
            "protocol {protocol}: {r:#?}"
        );
    }
    // Protocols 0-2 spell sets, bytes and complex numbers through allowed globals.
    let r = scan_file(&fixture("assorted_p2.pkl"), &limits()).unwrap();
    for g in ["__builtin__.set", "_codecs.encode", "__builtin__.complex"] {
        assert!(r.globals.contains(g), "{g} in {:?}", r.globals);
    }
}

#[test]
fn pytorch_zip_archive_is_safe() {
    let r = scan_file(&fixture("torch_state_dict.pt"), &limits()).unwrap();
    assert_eq!(
        (r.format, r.verdict),
        (Format::Pytorch, Verdict::Safe),
        "{r:#?}"
    );
    assert!(r.globals.contains("torch._utils._rebuild_tensor_v2"));
}

#[test]
fn os_system_via_global() {
    let r = scan_file(&fixture("system_proto0.pkl"), &limits()).unwrap();
    let at = assert_finding(
        &r,
        Verdict::Unsafe,
        ForbiddenGlobal,
        "\"posix.system\" via GLOBAL",
    );
    assert_eq!(at, Some(0));
    assert!(r.findings[0].message.contains("known dangerous"));
    // Hand-written: the protocol 0 form of os.system("echo x").
    let r = scan_bytes("x.pkl", b"cos\nsystem\n(S'echo x'\ntR.", &limits());
    assert_eq!(
        assert_finding(&r, Verdict::Unsafe, ForbiddenGlobal, "os.system"),
        Some(0)
    );
}

#[test]
fn os_system_via_stack_global_from_memo() {
    let r = scan_file(&fixture("system_proto4.pkl"), &limits()).unwrap();
    assert_finding(
        &r,
        Verdict::Unsafe,
        ForbiddenGlobal,
        "\"posix.system\" via STACK_GLOBAL",
    );
    // The operands are memoized with MEMOIZE, BINPUT and LONG_BINPUT, dropped from the
    // stack, and fetched back with BINGET and LONG_BINGET before STACK_GLOBAL.
    let mut p = b"\x80\x04\x8c\x02os\x94\x30\x8c\x06systemq\x07\x30".to_vec();
    p.extend_from_slice(b"\x8c\x06unusedr\x00\x01\x00\x00\x30");
    p.extend_from_slice(b"h\x00j\x07\x00\x00\x00");
    let at = p.len() as u64;
    p.extend_from_slice(b"\x93\x8c\x04echo\x85R.");
    let r = scan_bytes("memo.pkl", &p, &limits());
    let found = assert_finding(
        &r,
        Verdict::Unsafe,
        ForbiddenGlobal,
        "\"os.system\" via STACK_GLOBAL",
    );
    assert_eq!(found, Some(at));
}

#[test]
fn text_pickles_without_a_pickle_name_are_still_pickles() {
    // Protocol 0 is ASCII: under a name a loader unpickles anyway, it must not pass as text.
    for name in ["pytorch_model.bin", "weights", "notes.txt"] {
        let r = scan_bytes(name, b"cos\nsystem\n(S'echo x'\ntR.", &limits());
        assert_eq!(r.format, Format::Pickle, "{name}");
        assert_finding(&r, Verdict::Unsafe, ForbiddenGlobal, "os.system");
    }
    // Even without STOP: the import runs before the loader would notice.
    let r = scan_bytes("weights", b"cos\nsystem\n(S'echo x'\ntR", &limits());
    assert_eq!((r.format, r.verdict), (Format::Pickle, Verdict::Unsafe));
    // Ordinary text stays text.
    let r = scan_bytes("vocab.txt", b"[PAD]\n[UNK]\nhello\n", &limits());
    assert_eq!((r.format, r.verdict), (Format::Text, Verdict::Safe));
}

#[test]
fn os_system_via_inst() {
    let r = scan_bytes("inst.pkl", b"(S'echo x'\nios\nsystem\n.", &limits());
    assert_eq!(
        assert_finding(
            &r,
            Verdict::Unsafe,
            ForbiddenGlobal,
            "\"os.system\" via INST"
        ),
        Some(11)
    );
}

#[test]
fn dangerous_names_behind_safe_looking_modules() {
    for (module, name) in [
        ("collections", "OrderedDict.__init__"),
        ("torch", "load"),
        ("builtins", "getattr"),
    ] {
        let mut p = b"\x80\x04".to_vec();
        for s in [module, name] {
            p.push(0x8c);
            p.push(s.len() as u8);
            p.extend_from_slice(s.as_bytes());
        }
        p.extend_from_slice(b"\x93.");
        let r = scan_bytes("x.pkl", &p, &limits());
        assert_finding(
            &r,
            Verdict::Unsafe,
            ForbiddenGlobal,
            &format!("{module}.{name}"),
        );
    }
}

#[test]
fn concatenated_pickle_with_the_bad_one_second() {
    let r = scan_file(&fixture("concatenated.pkl"), &limits()).unwrap();
    let at = assert_finding(&r, Verdict::Unsafe, ForbiddenGlobal, "posix.system").unwrap();
    // The clean pickle comes first and ends with STOP; the bad one starts after it.
    let bytes = std::fs::read(fixture("concatenated.pkl")).unwrap();
    let first_stop = bytes.iter().position(|&b| b == b'.').unwrap() as u64;
    assert!(at > first_stop, "{at} > {first_stop}");
    let scan = scan_pickle(&bytes[..], &limits());
    assert_eq!(scan.pickles, 2);
}

#[test]
fn truncated_and_invalid_pickles_are_unsafe() {
    let whole = std::fs::read(fixture("state_dict_proto4.pkl")).unwrap();
    let r = scan_bytes("t.pkl", &whole[..100], &limits());
    assert_finding(&r, Verdict::Unsafe, Malformed, "truncated pickle");
    let r = scan_bytes("t.pkl", &whole[..whole.len() - 1], &limits());
    assert_finding(&r, Verdict::Unsafe, Malformed, "ends without STOP");
    let r = scan_bytes("empty.pkl", b"", &limits());
    assert_finding(&r, Verdict::Unsafe, Malformed, "truncated");
    let r = scan_bytes("bad.pkl", b"\x80\x02\xff.", &limits());
    assert_eq!(
        assert_finding(&r, Verdict::Unsafe, Malformed, "unknown opcode 0xff"),
        Some(2)
    );
    let r = scan_bytes("bad.pkl", b"\x80\x09N.", &limits());
    assert_finding(&r, Verdict::Unsafe, Malformed, "unsupported protocol 9");
    let r = scan_bytes("under.pkl", b"\x80\x02(t0R.", &limits());
    assert_finding(&r, Verdict::Unsafe, Malformed, "stack underflow");
    let r = scan_bytes("memo.pkl", b"\x80\x02h\x05.", &limits());
    assert_finding(&r, Verdict::Unsafe, Malformed, "memo key 5 is not defined");
    // A legacy torch.save file: raw storage bytes after the pickles.
    let mut legacy = whole.clone();
    legacy.extend_from_slice(&[0xee; 64]);
    let r = scan_bytes("legacy.pt", &legacy, &limits());
    assert_finding(&r, Verdict::Unsafe, Malformed, "in the data after pickle 1");
}

#[test]
fn calls_and_imports_that_cannot_be_resolved() {
    // REDUCE on a value that no import produced.
    let r = scan_bytes("x.pkl", b"\x80\x02N)R.", &limits());
    assert_finding(
        &r,
        Verdict::Unsafe,
        UnresolvedImport,
        "REDUCE calls a value",
    );
    // BUILD on an allowed global rewrites it.
    let r = scan_bytes(
        "x.pkl",
        b"\x80\x02ccollections\nOrderedDict\n}b.",
        &limits(),
    );
    assert_finding(
        &r,
        Verdict::Unsafe,
        UnresolvedImport,
        "BUILD sets attributes",
    );
    // copyreg extension codes.
    let r = scan_bytes("x.pkl", b"\x80\x02\x82\x01)R.", &limits());
    assert_finding(&r, Verdict::Unsafe, UnresolvedImport, "extension code 1");
    // STACK_GLOBAL on bytes, not strings.
    let r = scan_bytes("x.pkl", b"\x80\x04C\x02osC\x06system\x93.", &limits());
    assert_finding(&r, Verdict::Unsafe, UnresolvedImport, "not plain strings");
}

#[test]
fn opcode_budget_stops_a_pickle_bomb() {
    let mut p = b"\x80\x02".to_vec();
    p.extend(std::iter::repeat_n(*b"N0", 2_000_000).flatten());
    p.extend_from_slice(b"N.");
    let tight = ScanLimits {
        pickle_max_opcodes: 1_000_000,
        ..limits()
    };
    let r = scan_bytes("bomb.pkl", &p, &tight);
    assert_finding(
        &r,
        Verdict::Unsafe,
        LimitExceeded,
        "more than 1000000 pickle opcodes",
    );
    // Within the default budget the same stream is fine.
    assert_eq!(scan_bytes("ok.pkl", &p, &limits()).verdict, Verdict::Safe);
    // DUP doubling (a "billion laughs" pickle) is bounded by the stack limit.
    let mut dup = b"\x80\x02]".to_vec();
    dup.extend(std::iter::repeat_n(b'2', 2_000_000));
    let r = scan_bytes("dup.pkl", &dup, &limits());
    assert_finding(&r, Verdict::Unsafe, LimitExceeded, "stack deeper than");
}

#[test]
fn time_budget() {
    let mut p = b"\x80\x02".to_vec();
    p.extend(std::iter::repeat_n(*b"N0", 100_000).flatten());
    p.extend_from_slice(b"N.");
    let none = ScanLimits {
        pickle_max_duration: Duration::ZERO,
        ..limits()
    };
    let r = scan_bytes("slow.pkl", &p, &none);
    assert_finding(&r, Verdict::Unsafe, LimitExceeded, "took longer than");
}

#[test]
fn deep_nesting_hits_the_stack_limit() {
    for unit in [&b"("[..], b"]", b"(]"] {
        let mut p = b"\x80\x02".to_vec();
        p.extend(std::iter::repeat_n(unit, 1_500_000).flatten());
        let r = scan_bytes("deep.pkl", &p, &limits());
        assert_finding(
            &r,
            Verdict::Unsafe,
            LimitExceeded,
            "stack deeper than 1000000",
        );
    }
}

fn zip_of(entries: &[(&str, &[u8], CompressionMethod)]) -> Vec<u8> {
    let mut w = ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data, method) in entries {
        w.start_file(
            *name,
            SimpleFileOptions::default().compression_method(*method),
        )
        .unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

#[test]
fn malicious_pytorch_archive_names_the_member() {
    let r = scan_file(&fixture("malicious.pt"), &limits()).unwrap();
    assert_eq!(r.format, Format::Pytorch);
    assert_finding(&r, Verdict::Unsafe, ForbiddenGlobal, "posix.system");
    assert_eq!(r.findings[0].member.as_deref(), Some("malicious/data.pkl"));
}

#[test]
fn every_pickle_in_the_archive_is_scanned() {
    let safe = std::fs::read(fixture("state_dict_proto4.pkl")).unwrap();
    let bad = std::fs::read(fixture("system_proto4.pkl")).unwrap();
    let z = zip_of(&[
        ("m/data.pkl", &safe, CompressionMethod::Stored),
        ("m/extra/other.pkl", &bad, CompressionMethod::Deflated),
    ]);
    let r = scan_bytes("m.pt", &z, &limits());
    assert_finding(&r, Verdict::Unsafe, ForbiddenGlobal, "posix.system");
    assert_eq!(r.findings[0].member.as_deref(), Some("m/extra/other.pkl"));
}

#[test]
fn path_traversal_in_archives() {
    let safe = std::fs::read(fixture("state_dict_proto4.pkl")).unwrap();
    for name in ["../evil", "m/../../evil.pkl", "/etc/cron.d/evil"] {
        let z = zip_of(&[
            ("m/data.pkl", &safe, CompressionMethod::Stored),
            (name, b"x", CompressionMethod::Stored),
        ]);
        let r = scan_bytes("m.pt", &z, &limits());
        assert_finding(&r, Verdict::Unsafe, UnsafeArchiveEntry, name);
    }
}

#[test]
fn zip_bombs_are_refused_before_decompressing() {
    let zeros = vec![0u8; 20 << 20];
    let z = zip_of(&[("m/data.pkl", &zeros, CompressionMethod::Deflated)]);
    assert!(z.len() < 100 << 10);
    let r = scan_bytes("bomb.pt", &z, &limits());
    assert_finding(&r, Verdict::Unsafe, LimitExceeded, "zip bomb");
    let small = ScanLimits {
        archive_max_total: 1 << 20,
        ..limits()
    };
    let z = zip_of(&[("m/data/0", &zeros[..2 << 20], CompressionMethod::Stored)]);
    let r = scan_bytes("big.pt", &z, &small);
    assert_finding(
        &r,
        Verdict::Unsafe,
        LimitExceeded,
        "uncompress to more than",
    );
    let few = ScanLimits {
        archive_max_entries: 1,
        ..limits()
    };
    let z = zip_of(&[
        ("a", b"", CompressionMethod::Stored),
        ("b", b"", CompressionMethod::Stored),
    ]);
    assert_finding(
        &scan_bytes("many.zip", &z, &few),
        Verdict::Unsafe,
        LimitExceeded,
        "2 entries",
    );
    // An end record that declares more entries than the file can hold is refused before
    // the central directory is parsed.
    let mut lying = z.clone();
    let eocd = lying.windows(4).rposition(|w| w == b"PK\x05\x06").unwrap();
    lying[eocd + 8..eocd + 12].copy_from_slice(&[0xfe, 0xff, 0xfe, 0xff]);
    let r = scan_bytes("lying.zip", &lying, &limits());
    assert_finding(&r, Verdict::Unsafe, Malformed, "declares 65534 entries");
}

#[test]
fn torchscript_code_is_not_passed_as_safe() {
    let safe = std::fs::read(fixture("state_dict_proto4.pkl")).unwrap();
    let z = zip_of(&[
        ("m/data.pkl", &safe, CompressionMethod::Stored),
        (
            "m/code/__torch__/model.py",
            b"def forward(self, x):\n  return x\n",
            CompressionMethod::Stored,
        ),
    ]);
    let r = scan_bytes("scripted.pt", &z, &limits());
    assert_eq!(r.format, Format::Pytorch);
    assert_finding(&r, Verdict::Unknown, NotScanned, "TorchScript code");
}

#[test]
fn other_zips_and_broken_zips() {
    let z = zip_of(&[("weights.npy", b"\x93NUMPY", CompressionMethod::Stored)]);
    let r = scan_bytes("w.npz", &z, &limits());
    assert_eq!((r.format, r.verdict), (Format::Unknown, Verdict::Unknown));
    let whole = std::fs::read(fixture("torch_state_dict.pt")).unwrap();
    let r = scan_bytes("cut.pt", &whole[..whole.len() / 2], &limits());
    assert_finding(&r, Verdict::Unsafe, Malformed, "invalid zip archive");
}

#[test]
fn pickle_handling_changes_the_verdict() {
    let safe = scan_file(&fixture("torch_state_dict.pt"), &limits()).unwrap();
    let bad = scan_file(&fixture("malicious.pt"), &limits()).unwrap();
    assert_eq!(safe.verdict_under(PickleHandling::Deny), Verdict::Unsafe);
    assert_eq!(
        safe.verdict_under(PickleHandling::AllowSafeGlobals),
        Verdict::Safe
    );
    assert_eq!(
        bad.verdict_under(PickleHandling::AllowSafeGlobals),
        Verdict::Unsafe
    );
    assert_eq!(bad.verdict_under(PickleHandling::Allow), Verdict::Safe);
    let truncated = scan_bytes("t.pkl", b"\x80\x02N", &limits());
    assert_eq!(
        truncated.verdict_under(PickleHandling::Allow),
        Verdict::Unsafe
    );
}

/// Objects in a bucket are scanned through readers: the same verdicts and findings as
/// the files, the zip archive (which seeks) included.
#[test]
fn readers_are_judged_as_files_are() {
    for name in [
        "malicious.pt",
        "torch_state_dict.pt",
        "system_proto0.pkl",
        "state_dict_proto4.pkl",
    ] {
        let path = fixture(name);
        let bytes = std::fs::read(&path).unwrap();
        let from_file = scan_file(&path, &limits()).unwrap();
        let from_reader = lotabots_modelscan::scan_reader(
            name,
            bytes.len() as u64,
            || Ok(std::io::Cursor::new(&bytes)),
            &limits(),
        );
        assert_eq!(
            (
                from_reader.format,
                from_reader.verdict,
                &from_reader.globals
            ),
            (from_file.format, from_file.verdict, &from_file.globals),
            "{name}"
        );
        assert_eq!(
            from_reader.findings.len(),
            from_file.findings.len(),
            "{name}"
        );
    }
    let unreadable = lotabots_modelscan::scan_reader(
        "w.safetensors",
        10,
        || Err::<std::io::Cursor<Vec<u8>>, _>(std::io::Error::other("connection reset")),
        &limits(),
    );
    assert_ne!(unreadable.verdict, Verdict::Safe);
    assert!(
        format!("{unreadable:?}").contains("connection reset"),
        "{unreadable:?}"
    );
}
