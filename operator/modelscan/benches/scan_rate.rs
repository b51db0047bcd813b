//! Scan rate on large generated files, printed as MiB/s:
//! `cargo bench -p lotabots-modelscan --bench scan_rate`.
//!
//! - a 200 MiB pickle of numpy-style arrays (payloads skipped, the common case);
//! - an opcode-dense pickle (a list of 20 million small ints: the walker's own cost);
//! - the same 200 MiB of arrays as a PyTorch zip archive;
//! - a 256 MiB safetensors file with 4,096 tensors (only the header is read).
//!
//! Files are written to a temporary directory and scanned three times each, warm in the
//! page cache; the best run is reported, so the figure is the scanner's, not the disk's.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::Path,
    time::Instant,
};

use lotabots_modelscan::{ScanLimits, Verdict, scan_file};

const MIB: u64 = 1 << 20;

fn short_str(out: &mut impl Write, s: &str) -> std::io::Result<()> {
    out.write_all(&[0x8c, s.len() as u8])?;
    out.write_all(s.as_bytes())
}

/// `OrderedDict` of `count` arrays of `size` bytes each, as numpy pickles them (protocol 4).
fn array_pickle(out: &mut impl Write, count: u32, size: u64) -> std::io::Result<()> {
    out.write_all(b"\x80\x04")?;
    short_str(out, "collections")?;
    short_str(out, "OrderedDict")?;
    out.write_all(b"\x93)R")?;
    short_str(out, "numpy.core.multiarray")?;
    short_str(out, "_reconstruct")?;
    out.write_all(b"\x93q\x00\x30")?; // memo 0 = _reconstruct
    short_str(out, "numpy")?;
    short_str(out, "ndarray")?;
    out.write_all(b"\x93q\x01\x30")?; // memo 1 = ndarray
    short_str(out, "numpy")?;
    short_str(out, "dtype")?;
    out.write_all(b"\x93q\x02\x30")?; // memo 2 = dtype
    for i in 0..count {
        short_str(out, &format!("layers.{i}.weight"))?;
        // _reconstruct(ndarray, (0,), b'b')
        out.write_all(b"h\x00h\x01K\x00\x85C\x01b\x87R")?;
        // BUILD (1, (n,), dtype('f4'), False, payload)
        out.write_all(b"(K\x01J")?;
        out.write_all(&((size / 4) as u32).to_le_bytes())?;
        out.write_all(b"\x85h\x02")?;
        short_str(out, "f4")?;
        out.write_all(b"\x89\x88\x87R\x89\x8e")?;
        out.write_all(&size.to_le_bytes())?;
        let chunk = vec![0x3fu8; MIB as usize];
        let mut left = size;
        while left > 0 {
            let n = left.min(MIB);
            out.write_all(&chunk[..n as usize])?;
            left -= n;
        }
        out.write_all(b"tbs")?;
    }
    out.write_all(b".")
}

fn dense_pickle(out: &mut impl Write, ints: u32) -> std::io::Result<()> {
    out.write_all(b"\x80\x04]")?;
    for batch in 0..ints / 1000 {
        out.write_all(b"(")?;
        for i in 0..1000u32 {
            out.write_all(&[b'K', ((batch + i) % 256) as u8])?;
        }
        out.write_all(b"e")?;
    }
    out.write_all(b".")
}

fn safetensors(out: &mut impl Write, count: u64, size: u64) -> std::io::Result<()> {
    let mut header = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
    for i in 0..count {
        header.push_str(&format!(
            ",\"model.layers.{i}.mlp.weight\":{{\"dtype\":\"BF16\",\"shape\":[{},2],\"data_offsets\":[{},{}]}}",
            size / 4,
            i * size,
            (i + 1) * size
        ));
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(header.as_bytes())?;
    let chunk = vec![0u8; size as usize];
    for _ in 0..count {
        out.write_all(&chunk)?;
    }
    Ok(())
}

fn pytorch_zip(path: &Path, pickle: &Path) -> std::io::Result<()> {
    use zip::{CompressionMethod, ZipWriter, write::SimpleFileOptions};
    let stored = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .large_file(true);
    let mut z = ZipWriter::new(BufWriter::new(File::create(path)?));
    z.start_file("archive/data.pkl", stored)?;
    std::io::copy(&mut File::open(pickle)?, &mut z)?;
    z.start_file("archive/version", stored)?;
    z.write_all(b"3\n")?;
    z.finish()?.flush()
}

fn write(path: &Path, f: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>) {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path).expect("create"));
    f(&mut out).expect("write");
    out.flush().expect("flush");
}

fn measure(label: &str, path: &Path) {
    let limits = ScanLimits::default();
    let size = std::fs::metadata(path).expect("size").len();
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        let report = scan_file(path, &limits).expect("scan");
        best = best.min(start.elapsed().as_secs_f64());
        assert_eq!(report.verdict, Verdict::Safe, "{label}: {report:#?}");
    }
    println!(
        "{label:<44} {:>8.1} MiB  {:>9.3} s  {:>10.1} MiB/s",
        size as f64 / MIB as f64,
        best,
        size as f64 / MIB as f64 / best
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too and must stay
    // cheap, so only `--bench` does the work.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let arrays = dir.path().join("arrays.pkl");
    write(&arrays, |o| array_pickle(o, 200, MIB));
    measure("pickle, 200 arrays of 1 MiB (numpy style)", &arrays);
    let dense = dir.path().join("dense.pkl");
    write(&dense, |o| dense_pickle(o, 20_000_000));
    let opcodes = 20_000_000u64 + 2 * 20_000 + 3;
    let start = Instant::now();
    scan_file(&dense, &ScanLimits::default()).expect("scan");
    let secs = start.elapsed().as_secs_f64();
    measure("pickle, 20M ints (opcode-dense)", &dense);
    println!(
        "{:<44} {:>8.1} M opcodes/s",
        "  opcode rate (single run)",
        opcodes as f64 / secs / 1e6
    );
    let zip = dir.path().join("arrays.pt");
    pytorch_zip(&zip, &arrays).expect("zip");
    measure("PyTorch zip, data.pkl of 200 MiB", &zip);
    let st = dir.path().join("model.safetensors");
    write(&st, |o| safetensors(o, 4096, 64 << 10));
    measure("safetensors, 4096 tensors, 256 MiB", &st);
}
