//! The container images (`lotabots_e2e::images`), built from the binaries cargo built for
//! these tests (`target/debug/lotabots-{operator,agent,webhook}`; `cargo test --workspace`
//! builds them, a lone `cargo test -p lotabots-e2e` does not — then build them first):
//!
//! - `crane validate --tarball` passes for each archive;
//! - the config says what the manifests rely on: user 65532:65532, the entrypoint, the
//!   default command, `PATH`, the working directory, linux/amd64 and the OCI labels;
//! - the archives are named as `config/` and the chart name the images;
//! - the C runtime layer is one and the same in all three, and holds nothing but the
//!   loader, shared libraries, `/etc/passwd`/`/etc/group` and the CA bundle;
//! - the CA bundle `/etc/ssl/certs/ca-certificates.crt` is PEM of more than 100
//!   certificates, every one a trust anchor rustls accepts, and `SSL_CERT_FILE` names it;
//! - unpacked into a directory, each binary runs `--version` with the image's loader and
//!   libraries only (`--inhibit-cache`, and `--list` shows every library resolved inside
//!   the image): no container engine needed.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io::Read,
    path::{Path, PathBuf},
    process::Command,
};

use lotabots_e2e::{
    images::{self, BIN_DIR, BuildOptions, COMPONENTS, LIB_DIR},
    packaging, repo_root,
};
use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, pem::PemObject},
};
use serde_json::Value;

const REVISION: &str = "0123456789abcdef0123456789abcdef01234567";

/// `target/<profile>`: this test binary is `target/<profile>/deps/images-<hash>`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// The files of an image archive (`crane … --output`: manifest.json, the config, the
/// gzip'd layers), by name.
fn archive_files(archive: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut tar = tar::Archive::new(File::open(archive).unwrap());
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        files.insert(name, bytes);
    }
    files
}

/// Unpacks the layers, in order, into `root`; returns the regular files' paths.
fn unpack(files: &BTreeMap<String, Vec<u8>>, layers: &[String], root: &Path) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for layer in layers {
        let gz = flate2::read::GzDecoder::new(&files[layer][..]);
        let mut tar = tar::Archive::new(gz);
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.header().entry_type().is_file() {
                paths.insert(entry.path().unwrap().display().to_string());
            }
            assert!(
                entry.unpack_in(root).unwrap(),
                "a layer path escapes the root"
            );
        }
    }
    paths
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

#[test]
fn images_build_validate_and_run_unpacked() {
    let bin_dir = profile_dir();
    for c in COMPONENTS {
        assert!(
            bin_dir.join(c.binary).is_file(),
            "{} is not built in {}: cargo build --workspace --bins",
            c.binary,
            bin_dir.display()
        );
    }
    let out = tempfile::tempdir().unwrap();
    let opts = BuildOptions::release(bin_dir, out.path().to_path_buf(), Some(REVISION.to_owned()))
        .unwrap();
    let built = images::build_all(&opts).expect("images build");
    assert_eq!(built.len(), COMPONENTS.len());

    // The references are the images the manifests run, and the workload images the
    // samples name (a GpuAttestation's workloadCheck, a ModelAttestation's behaviour).
    let rendered = packaging::documents(
        &packaging::kustomize(&packaging::config_default()).expect("kustomize"),
    )
    .unwrap();
    let named: BTreeSet<String> = packaging::of_kinds(&rendered, &["Deployment", "DaemonSet"])
        .iter()
        .flat_map(|o| {
            o["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
        })
        .map(|c| c["image"].as_str().unwrap().to_owned())
        .collect();
    let (workloads, deployed): (Vec<&images::BuiltImage>, Vec<&images::BuiltImage>) = built
        .iter()
        .partition(|b| images::is_workload(&b.component));
    let references: BTreeSet<String> = deployed.iter().map(|b| b.reference.clone()).collect();
    assert_eq!(
        references, named,
        "built images vs the images config/ names"
    );
    let samples = packaging::documents(
        &packaging::kustomize(&repo_root().join("config/samples")).expect("kustomize samples"),
    )
    .unwrap();
    let sampled: BTreeSet<String> = samples
        .iter()
        .filter_map(|o| {
            o["spec"]["workloadCheck"]["image"]
                .as_str()
                .or(o["spec"]["behaviour"]["image"].as_str())
        })
        .map(str::to_owned)
        .collect();
    let workload_refs: BTreeSet<String> = workloads.iter().map(|b| b.reference.clone()).collect();
    assert_eq!(
        workload_refs, sampled,
        "built workload images vs the images config/samples names"
    );

    let mut runtime_layers = BTreeSet::new();
    for image in &built {
        let c = image.component;
        images::validate(&image.archive).expect("crane validate --tarball");
        let files = archive_files(&image.archive);
        let manifest = json(&files["manifest.json"]);
        let manifest = &manifest[0];
        assert_eq!(manifest["RepoTags"], serde_json::json!([image.reference]));
        let config = json(&files[manifest["Config"].as_str().unwrap()]);
        assert_eq!(config["os"], "linux");
        assert_eq!(config["architecture"], "amd64");
        let cfg = &config["config"];
        let entrypoint = format!("{BIN_DIR}/{}", c.binary);
        assert_eq!(cfg["User"], "65532:65532", "{}", c.name);
        assert_eq!(cfg["Entrypoint"], serde_json::json!([entrypoint]));
        if c.cmd.is_empty() {
            assert!(cfg["Cmd"].is_null(), "{}: Cmd {}", c.name, cfg["Cmd"]);
        } else {
            assert_eq!(cfg["Cmd"], serde_json::json!(c.cmd));
        }
        assert_eq!(cfg["WorkingDir"], "/");
        let env: Vec<&str> = cfg["Env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert!(env.contains(&"PATH=/usr/local/bin"), "{env:?}");
        assert!(
            env.contains(&format!("SSL_CERT_FILE={}", images::CA_BUNDLE).as_str()),
            "{}: no SSL_CERT_FILE in {env:?}",
            c.name
        );
        for e in c.env {
            assert!(env.contains(e), "{}: no {e} in {env:?}", c.name);
        }
        let labels = &cfg["Labels"];
        assert_eq!(labels["org.opencontainers.image.revision"], REVISION);
        assert_eq!(labels["org.opencontainers.image.version"], "0.1.0");
        assert_eq!(
            labels["org.opencontainers.image.source"],
            "https://github.com/lotabots/lotabots"
        );

        let layers: Vec<String> = manifest["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(layers.len(), 2, "runtime and binary: {layers:?}");
        runtime_layers.insert(layers[0].clone());

        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let paths = unpack(&files, &layers, r);
        for p in &paths {
            assert!(
                p == &entrypoint[1..]
                    || p == "etc/passwd"
                    || p == "etc/group"
                    || p == &images::CA_BUNDLE[1..]
                    || p == "lib64/ld-linux-x86-64.so.2"
                    || (p.starts_with(LIB_DIR) && p.contains(".so.")),
                "{}: unexpected file {p}",
                c.name
            );
        }
        assert!(
            !paths.contains(&format!("{LIB_DIR}/ld-linux-x86-64.so.2")),
            "{}: the loader twice",
            c.name
        );
        for lib in images::NVML_NEEDS {
            assert!(
                paths.contains(&format!("{LIB_DIR}/{lib}")),
                "{}: no {lib} for NVML",
                c.name
            );
        }
        let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap();
        assert!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");

        // The CA bundle: PEM, Mozilla's roots, each one a trust anchor rustls takes.
        let bundle = std::fs::read(r.join(&images::CA_BUNDLE[1..])).unwrap();
        assert!(!bundle.is_empty(), "{}: an empty CA bundle", c.name);
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bundle)
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{}: the CA bundle is not PEM: {e}", c.name));
        assert!(
            certs.len() > 100,
            "{}: {} certificates in the CA bundle",
            c.name,
            certs.len()
        );
        let (added, ignored) = RootCertStore::empty().add_parsable_certificates(certs.clone());
        assert_eq!(
            (added, ignored),
            (certs.len(), 0),
            "{}: certificates rustls cannot take as roots",
            c.name
        );

        // The image's loader, the image's libraries, no ld.so.cache of this machine.
        let loader = r.join("lib64/ld-linux-x86-64.so.2");
        let run = |loader_args: &[&str], args: &[&str]| {
            let out = Command::new(&loader)
                .arg("--inhibit-cache")
                .arg("--library-path")
                .arg(r.join(LIB_DIR))
                .args(loader_args)
                .arg(r.join(&entrypoint[1..]))
                .args(args)
                .env_clear()
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                c.name,
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        assert_eq!(
            run(&[], &["--version"]).trim(),
            format!("{} 0.1.0", c.binary)
        );
        let listed = run(&["--list"], &[]);
        for line in listed.lines().filter(|l| l.contains("=>")) {
            let target = line.split("=>").nth(1).unwrap().trim();
            assert!(
                target.starts_with(&r.display().to_string()),
                "{}: a library resolved outside the image: {line}",
                c.name
            );
        }
        eprintln!(
            "{}: archive {:.1} MiB, unpacked {:.1} MiB",
            image.reference,
            image.archive_bytes as f64 / 1048576.0,
            image.unpacked_bytes as f64 / 1048576.0
        );
    }
    assert_eq!(
        runtime_layers.len(),
        1,
        "the C runtime layer differs between the images: {runtime_layers:?}"
    );
}
