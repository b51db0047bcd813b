//! Container images of the five binaries — the operator, the agent and the webhook that
//! the manifests run, and the two workload images the agent launches (the GPU self-test
//! of a GpuAttestation's `workloadCheck`, the probe runner of a ModelAttestation's
//! `behaviour`) — built without a container engine (there is
//! none on the development and CI machines): go-containerregistry's `crane`, pinned in
//! `e2e/testbins/packaging`, appends layer tarballs to an empty OCI base and sets the
//! configuration, and writes each image as an archive (`docker load`, `podman load`,
//! `crane push` read it).
//!
//! Each image is two layers on nothing:
//!
//! 1. the C runtime, identical in all five (so a registry and a node store it once):
//!    the dynamic loader and exactly the shared libraries the binaries need (their ELF
//!    `DT_NEEDED`, transitively), taken from Debian's `libc6` and `libgcc-s1` packages
//!    of the version installed here — the glibc the binaries were linked against — plus
//!    what NVIDIA's `libnvidia-ml.so.1` needs, because the agent `dlopen`s it (the NVIDIA
//!    container runtime injects NVML, not a C library); `/etc/passwd` and
//!    `/etc/group` naming the `nonroot` user 65532; and the CA bundle
//!    `/etc/ssl/certs/ca-certificates.crt` (see [`CA_BUNDLE`]), which `SSL_CERT_FILE`
//!    in every image's environment names;
//! 2. the binary, `/usr/local/bin/lotabots-…`.
//!
//! Why glibc and not static musl binaries: the agent and the self-test need glibc in any
//! case (a static binary cannot `dlopen` the glibc-linked NVML or `libcuda`), one shared
//! runtime layer costs the other images nothing, and a musl build would compile the whole dependency tree a
//! second time in CI (and needs a musl C compiler for ring, which Debian's `musl-tools`
//! provides but the CI machines do not have).
//!
//! `crane mutate` reads its input from a registry only, so the layers are appended into
//! `crane registry serve` on 127.0.0.1 (a temporary directory, stopped afterwards) and
//! `crane mutate … --output` writes the final archive, named with the release reference
//! (`ghcr.io/lotabots/operator:0.1.0`), from there. Nothing leaves the machine. The
//! Debian packages are downloaded once (`apt-get download`) into
//! `${LOTABOTS_CACHE:-~/.cache/lotabots}/images/debs/`.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fs::{self, File},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::{
    packaging::run,
    ports::{free_ports, is_listening},
    process::{DEFAULT_GRACE, Process, log_tail},
    repo_root,
    testbins::TestBins,
};

/// The registry the manifests in `config/` and the chart name.
pub const REPOSITORY: &str = "ghcr.io/lotabots";

/// The uid and gid every image runs as (and every pod, under Pod Security `restricted`).
pub const USER: &str = "65532:65532";

/// Where the binary is in every image.
pub const BIN_DIR: &str = "/usr/local/bin";

/// Where the shared libraries are: a directory of glibc's default search path on Debian,
/// and where the NVIDIA container runtime puts NVML in a Debian-like image.
pub const LIB_DIR: &str = "lib/x86_64-linux-gnu";

/// What NVIDIA's `libnvidia-ml.so.1` needs from the C runtime (its `DT_NEEDED`): the
/// agent loads it at run time, so the binary's own `DT_NEEDED` does not name these.
/// Since glibc 2.34 the last three are small stubs.
pub const NVML_NEEDS: &[&str] = &[
    "libc.so.6",
    "libm.so.6",
    "libdl.so.2",
    "libpthread.so.0",
    "librt.so.1",
];

/// The Debian packages the C runtime comes from.
pub const RUNTIME_PACKAGES: &[&str] = &["libc6", "libgcc-s1"];

/// The Debian package the CA bundle comes from.
pub const CA_PACKAGE: &str = "ca-certificates";

/// Where the CA bundle is in every image: Debian's path, one PEM file of Mozilla's roots.
///
/// Who reads it, in our binaries (all rustls with ring):
/// - `rustls-native-certs` (`load_native_certs`) reads `SSL_CERT_FILE` when set, else
///   probes `openssl-probe`'s paths, this one among them. It is behind the S3 client
///   (`aws-smithy-http-client` with `rustls-ring` loads the native roots), the GCS client
///   (`google-cloud-storage`/`google-cloud-auth` use reqwest 0.13, whose rustls goes through
///   `rustls-platform-verifier`, which on Linux loads the native roots), the operator's
///   OIDC/JWKS client (reqwest 0.12 built with `tls_built_in_native_certs(true)`,
///   `operator/src/tokens/jwks.rs`), and kube (`rustls-platform-verifier` when a
///   kubeconfig gives no CA). Without this file they have no roots at all and every TLS
///   handshake to a public endpoint fails.
/// - Not read: the workspace's reqwest 0.12 (`rustls-tls-manual-roots`) trusts only what
///   is added to it; sqlx (`tls-rustls-ring-webpki`) verifies PostgreSQL with the
///   compiled-in `webpki-roots` (plus `sslrootcert`); kube in a pod trusts the service
///   account's `ca.crt`.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The environment every image sets besides `PATH`: where the CA bundle is, so that
/// `rustls-native-certs` reads it without probing.
pub const SSL_CERT_FILE_ENV: &str = "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt";

/// One image.
#[derive(Clone, Copy, Debug)]
pub struct Component {
    /// `operator`, `agent`, `webhook`, `gpu-selftest`, `probe-runner`: the image name
    /// under [`REPOSITORY`].
    pub name: &'static str,
    /// The binary.
    pub binary: &'static str,
    /// The default arguments (`Cmd`): what the manifests run. Empty for the workload
    /// images, whose launcher passes everything in the environment.
    pub cmd: &'static [&'static str],
    /// Environment besides `PATH`.
    pub env: &'static [&'static str],
}

/// The five images.
pub const COMPONENTS: [Component; 5] = [
    Component {
        name: "operator",
        binary: "lotabots-operator",
        cmd: &["run"],
        env: &[],
    },
    Component {
        name: "agent",
        binary: "lotabots-agent",
        cmd: &["run"],
        // What NVIDIA's own images declare, so that the NVIDIA runtime injects NVML
        // also under `docker run --runtime nvidia`; the DaemonSet sets them too.
        env: &[
            "NVIDIA_VISIBLE_DEVICES=all",
            "NVIDIA_DRIVER_CAPABILITIES=utility",
        ],
    },
    Component {
        name: "webhook",
        binary: "lotabots-webhook",
        cmd: &["serve"],
        env: &[],
    },
    Component {
        name: "gpu-selftest",
        binary: "lotabots-gpu-selftest",
        cmd: &[],
        // The self-test loads libcuda at run time (no CUDA toolkit in the image): ask the
        // NVIDIA runtime to inject the driver's compute libraries for the devices the
        // device plugin allocated.
        env: &["NVIDIA_DRIVER_CAPABILITIES=compute,utility"],
    },
    Component {
        name: "probe-runner",
        binary: "lotabots-probe-runner",
        cmd: &[],
        env: &["NVIDIA_DRIVER_CAPABILITIES=compute,utility"],
    },
];

/// Whether `c` is a workload image (launched by the agent, named by a GpuAttestation's
/// `workloadCheck.image` or a ModelAttestation's `behaviour.image`) rather than a
/// component the manifests deploy.
pub fn is_workload(c: &Component) -> bool {
    c.cmd.is_empty()
}

/// What to build.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Where the five binaries are (a cargo profile directory, e.g. `target/release`).
    pub bin_dir: PathBuf,
    /// Where the archives go (`<name>.tar`).
    pub out_dir: PathBuf,
    /// The registry and namespace of the references, [`REPOSITORY`] by default.
    pub repository: String,
    /// The tag and `org.opencontainers.image.version`: the workspace version.
    pub version: String,
    /// `org.opencontainers.image.revision`: the commit.
    pub revision: String,
    /// `org.opencontainers.image.source`: the repository URL.
    pub source: String,
}

impl BuildOptions {
    /// Release references and labels: this workspace's version and repository URL, and
    /// `revision` or else the checkout's commit (`git rev-parse HEAD`).
    pub fn release(bin_dir: PathBuf, out_dir: PathBuf, revision: Option<String>) -> Result<Self> {
        Ok(Self {
            bin_dir,
            out_dir,
            repository: REPOSITORY.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            revision: match revision {
                Some(r) => r,
                None => head_commit()?,
            },
            source: env!("CARGO_PKG_REPOSITORY").to_owned(),
        })
    }

    /// `<repository>/<name>:<version>`.
    pub fn reference(&self, c: &Component) -> String {
        format!("{}/{}:{}", self.repository, c.name, self.version)
    }
}

/// One built image.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    /// Which one.
    pub component: Component,
    /// Its reference (the archive's tag).
    pub reference: String,
    /// The archive.
    pub archive: PathBuf,
    /// The archive's size: the compressed layers, the config and the manifest.
    pub archive_bytes: u64,
    /// The layers' size uncompressed (what a node unpacks).
    pub unpacked_bytes: u64,
}

/// The commit checked out in the repository.
pub fn head_commit() -> Result<String> {
    let out = run(
        Path::new("git"),
        &[
            "-C",
            &repo_root().display().to_string(),
            "rev-parse",
            "HEAD",
        ],
        None,
    )?
    .ok()
    .context("the image revision label needs the commit: pass it explicitly outside git")?;
    Ok(out.trim().to_owned())
}

/// Builds the five images of `opts` (see the module documentation).
pub fn build_all(opts: &BuildOptions) -> Result<Vec<BuiltImage>> {
    let crane = packaging_tool("crane")?;
    fs::create_dir_all(&opts.out_dir)
        .with_context(|| format!("creating {}", opts.out_dir.display()))?;
    let work = tempfile::Builder::new()
        .prefix("lotabots-images")
        .tempdir()?;
    let binaries: Vec<PathBuf> = COMPONENTS
        .iter()
        .map(|c| {
            let p = opts.bin_dir.join(c.binary);
            ensure!(
                p.is_file(),
                "no {} in {}: build it first (cargo build -p {})",
                c.binary,
                opts.bin_dir.display(),
                c.binary
            );
            Ok(p)
        })
        .collect::<Result<_>>()?;

    let runtime = c_runtime(&binaries, &cache_dir().join("debs"), work.path())?;
    let runtime_layer = work.path().join("runtime.tar");
    let mut runtime_files: Vec<LayerFile> = runtime
        .iter()
        .map(|(in_image, on_disk)| LayerFile::copy(in_image, on_disk, 0o755))
        .collect();
    runtime_files.push(LayerFile::text("etc/passwd", PASSWD, 0o644));
    runtime_files.push(LayerFile::text("etc/group", GROUP, 0o644));
    let bundle = ca_bundle(&cache_dir().join("debs"), work.path())?;
    runtime_files.push(LayerFile::bytes(
        CA_BUNDLE.trim_start_matches('/'),
        bundle,
        0o644,
    ));
    let runtime_bytes = write_layer(&runtime_layer, &runtime_files)?;

    let registry = Registry::start(&crane, work.path())?;
    let mut built = Vec::new();
    for (c, binary) in COMPONENTS.iter().zip(&binaries) {
        let bin_layer = work.path().join(format!("{}.tar", c.name));
        let in_image = format!("{}/{}", BIN_DIR.trim_start_matches('/'), c.binary);
        let bin_bytes = write_layer(&bin_layer, &[LayerFile::copy(&in_image, binary, 0o755)])?;
        let staged = format!("127.0.0.1:{}/lotabots/{}:staged", registry.port, c.name);
        run(
            &crane,
            &[
                "append",
                "--oci-empty-base",
                "--new_layer",
                &runtime_layer.display().to_string(),
                "--new_layer",
                &bin_layer.display().to_string(),
                "--new_tag",
                &staged,
            ],
            None,
        )?
        .ok()?;
        let reference = opts.reference(c);
        let archive = opts.out_dir.join(format!("{}.tar", c.name));
        let entrypoint = format!("{BIN_DIR}/{}", c.binary);
        let mut args: Vec<String> = [
            "mutate",
            staged.as_str(),
            "--entrypoint",
            entrypoint.as_str(),
            "--user",
            USER,
            "--workdir",
            "/",
            "--set-platform",
            "linux/amd64",
            "--tag",
            reference.as_str(),
        ]
        .map(str::to_owned)
        .into();
        if !c.cmd.is_empty() {
            args.extend(["--cmd".to_owned(), c.cmd.join(",")]);
        }
        args.extend(["--output".to_owned(), archive.display().to_string()]);
        args.extend(["--env".to_owned(), format!("PATH={BIN_DIR}")]);
        args.extend(["--env".to_owned(), SSL_CERT_FILE_ENV.to_owned()]);
        for env in c.env {
            args.extend(["--env".to_owned(), (*env).to_owned()]);
        }
        for (key, value) in labels(opts) {
            args.extend(["--label".to_owned(), format!("{key}={value}")]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&crane, &args, None)?.ok()?;
        built.push(BuiltImage {
            component: *c,
            reference,
            archive_bytes: fs::metadata(&archive)?.len(),
            archive,
            unpacked_bytes: runtime_bytes + bin_bytes,
        });
    }
    registry.stop()?;
    Ok(built)
}

/// The OCI labels of every image.
pub fn labels(opts: &BuildOptions) -> BTreeMap<&'static str, String> {
    [
        ("org.opencontainers.image.source", opts.source.clone()),
        ("org.opencontainers.image.version", opts.version.clone()),
        ("org.opencontainers.image.revision", opts.revision.clone()),
        (
            "org.opencontainers.image.licenses",
            env!("CARGO_PKG_LICENSE").to_owned(),
        ),
    ]
    .into()
}

/// `crane validate --tarball archive`: the manifest, config and layer digests agree.
pub fn validate(archive: &Path) -> Result<()> {
    let out = run(
        &packaging_tool("crane")?,
        &["validate", "--tarball", &archive.display().to_string()],
        None,
    )?
    .ok()?;
    ensure!(out.starts_with("PASS"), "crane validate: {}", out.trim());
    Ok(())
}

/// A packaging tool of `e2e/testbins/packaging` (`crane`, `promrules`), from the same
/// cache directory as the Kubernetes binaries.
pub fn packaging_tool(name: &str) -> Result<PathBuf> {
    let bins = TestBins::locate()?;
    let p = bins.bin(name);
    ensure!(
        p.is_file(),
        "{} is missing: {} was built before e2e/testbins/packaging existed; \
         unset LOTABOTS_TESTBINS or point it at the directory e2e/testbins/build.sh prints",
        p.display(),
        bins.dir().display()
    );
    Ok(p)
}

/// `${LOTABOTS_CACHE:-$HOME/.cache/lotabots}/images`.
fn cache_dir() -> PathBuf {
    let root = std::env::var_os("LOTABOTS_CACHE")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/lotabots")
        });
    root.join("images")
}

const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin\n\
                      nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nnonroot:x:65532:\n";

/// The C runtime the binaries need: (path in the image, file here) for the dynamic
/// loader and every shared library, from Debian's packages of the installed version.
pub fn c_runtime(
    binaries: &[PathBuf],
    deb_cache: &Path,
    work: &Path,
) -> Result<BTreeMap<String, PathBuf>> {
    let mut roots = Vec::new();
    for package in RUNTIME_PACKAGES {
        roots.push(extract_package(package, deb_cache, work)?);
    }
    let mut files = BTreeMap::new();
    let mut wanted: VecDeque<(String, String)> = NVML_NEEDS
        .iter()
        .map(|l| (l.to_string(), "libnvidia-ml.so.1 (NVML)".to_owned()))
        .collect();
    for bin in binaries {
        let elf = ElfDeps::read(bin)?;
        let interp = elf.interpreter.with_context(|| {
            format!(
                "{} is static or has no PT_INTERP: nothing to ship",
                bin.display()
            )
        })?;
        let path = interp.trim_start_matches('/').to_owned();
        if !files.contains_key(&path) {
            files.insert(path.clone(), find_in(&roots, &path)?);
        }
        let by = bin.file_name().unwrap_or_default().to_string_lossy();
        wanted.extend(elf.needed.into_iter().map(|l| (l, by.to_string())));
    }
    // libc.so.6 names the loader too; it is already there, as the interpreter.
    let mut seen: BTreeSet<String> = files
        .keys()
        .filter_map(|p| Path::new(p).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    while let Some((soname, needed_by)) = wanted.pop_front() {
        if !seen.insert(soname.clone()) {
            continue;
        }
        let path = format!("{LIB_DIR}/{soname}");
        let found = find_in(&roots, &path).with_context(|| {
            format!(
                "{soname}, which {needed_by} needs, is in none of the packages {RUNTIME_PACKAGES:?}"
            )
        })?;
        let deps = ElfDeps::read(&found)?;
        wanted.extend(deps.needed.into_iter().map(|l| (l, soname.clone())));
        files.insert(path, found);
    }
    Ok(files)
}

/// The CA bundle: what `update-ca-certificates` writes at install time from Debian's
/// `ca-certificates` of the version installed here. The package ships only the single
/// certificates (`/usr/share/ca-certificates/mozilla/*.crt`, all enabled by default);
/// the tool concatenates those its configuration lists, sorted, each ending in a
/// newline, so that is done here: bytewise-sorted names, a missing final newline added.
/// A machine's own `/etc/ssl/certs/ca-certificates.crt` begins with the same bytes (its
/// local CAs, if any, follow) and is not taken, since it may hold private CAs.
pub fn ca_bundle(deb_cache: &Path, work: &Path) -> Result<Vec<u8>> {
    let root = extract_package(CA_PACKAGE, deb_cache, work)?;
    concat_certs(&root.join("usr/share/ca-certificates/mozilla"))
}

/// The `*.crt` files of `dir`, by bytewise-sorted name, each ending in a newline.
fn concat_certs(dir: &Path) -> Result<Vec<u8>> {
    let mut crts: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("{CA_PACKAGE} has no {}", dir.display()))?
        .map(|e| Ok(e?.path()))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .collect();
    crts.sort();
    ensure!(!crts.is_empty(), "{CA_PACKAGE} ships no certificates");
    let mut bundle = Vec::new();
    for crt in &crts {
        let pem = fs::read(crt).with_context(|| format!("reading {}", crt.display()))?;
        bundle.extend_from_slice(&pem);
        if !bundle.ends_with(b"\n") {
            bundle.push(b'\n');
        }
    }
    Ok(bundle)
}

/// `dpkg-deb -x` of [`debian_package`] into `work/deb-<package>`; returns that directory.
fn extract_package(package: &str, deb_cache: &Path, work: &Path) -> Result<PathBuf> {
    let deb = debian_package(package, deb_cache)?;
    let root = work.join(format!("deb-{package}"));
    run(
        Path::new("dpkg-deb"),
        &[
            "-x",
            &deb.display().to_string(),
            &root.display().to_string(),
        ],
        None,
    )?
    .ok()?;
    Ok(root)
}

/// A Debian package of the version installed here, from the cache or `apt-get download`.
fn debian_package(package: &str, cache: &Path) -> Result<PathBuf> {
    let version = run(
        Path::new("dpkg-query"),
        &["-W", "-f", "${Version}", package],
        None,
    )?
    .ok()
    .with_context(|| {
        format!("{package} is not installed: the images take its files, of the installed version")
    })?;
    // One directory per package and version, holding that one .deb.
    let dir = cache.join(format!("{package}_{}", version.trim().replace(':', "%3a")));
    if let Some(deb) = single_deb(&dir)? {
        return Ok(deb);
    }
    let partial = cache.join(format!(".{package}.partial.{}", std::process::id()));
    fs::create_dir_all(&partial)?;
    let spec = format!("{package}={}", version.trim());
    let out = Command::new("apt-get")
        .args(["download", &spec])
        .current_dir(&partial)
        .output()
        .context("running apt-get download")?;
    if !out.status.success() {
        let _ = fs::remove_dir_all(&partial);
        bail!(
            "apt-get download {spec} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&partial, &dir)?;
    single_deb(&dir)?.with_context(|| format!("apt-get download {spec} left no .deb"))
}

fn single_deb(dir: &Path) -> Result<Option<PathBuf>> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(None);
    };
    let debs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    Ok(match debs.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    })
}

/// The regular file at `path` in the first extracted package that has it, following
/// symlinks inside that package (`lib64/ld-linux-x86-64.so.2` is an absolute one).
fn find_in(roots: &[PathBuf], path: &str) -> Result<PathBuf> {
    roots
        .iter()
        .find_map(|root| resolve_in(root, Path::new(path)))
        .with_context(|| format!("/{path} is in none of the packages {RUNTIME_PACKAGES:?}"))
}

fn resolve_in(root: &Path, path: &Path) -> Option<PathBuf> {
    let mut at = root.join(path);
    for _ in 0..8 {
        let meta = fs::symlink_metadata(&at).ok()?;
        if meta.is_file() {
            return Some(at);
        }
        let target = fs::read_link(&at).ok()?;
        at = match target.strip_prefix("/") {
            Ok(absolute) => root.join(absolute),
            Err(_) => at.parent()?.join(target),
        };
    }
    None
}

/// What an ELF file needs from the dynamic loader.
struct ElfDeps {
    interpreter: Option<String>,
    needed: Vec<String>,
}

impl ElfDeps {
    fn read(path: &Path) -> Result<Self> {
        let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let elf = goblin::elf::Elf::parse(&bytes)
            .with_context(|| format!("{} is not an ELF file", path.display()))?;
        Ok(Self {
            interpreter: elf.interpreter.map(str::to_owned),
            needed: elf.libraries.iter().map(|s| s.to_string()).collect(),
        })
    }
}

/// One file of a layer.
struct LayerFile {
    path: String,
    content: Content,
    mode: u32,
}

enum Content {
    File(PathBuf),
    Text(&'static str),
    Bytes(Vec<u8>),
}

impl LayerFile {
    fn copy(path: &str, from: &Path, mode: u32) -> Self {
        Self {
            path: path.to_owned(),
            content: Content::File(from.to_owned()),
            mode,
        }
    }

    fn text(path: &str, text: &'static str, mode: u32) -> Self {
        Self {
            path: path.to_owned(),
            content: Content::Text(text),
            mode,
        }
    }

    fn bytes(path: &str, bytes: Vec<u8>, mode: u32) -> Self {
        Self {
            path: path.to_owned(),
            content: Content::Bytes(bytes),
            mode,
        }
    }
}

/// Writes a layer tarball: its parent directories, then the files, sorted, owned by root
/// and dated 1970 so that the same inputs give the same layer digest. Returns its size.
fn write_layer(tarball: &Path, files: &[LayerFile]) -> Result<u64> {
    let mut builder = tar::Builder::new(
        File::create(tarball).with_context(|| format!("creating {}", tarball.display()))?,
    );
    let mut sorted: Vec<&LayerFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let dirs: BTreeSet<String> = sorted
        .iter()
        .flat_map(|f| {
            Path::new(&f.path)
                .ancestors()
                .skip(1)
                .filter(|a| !a.as_os_str().is_empty())
                .map(|a| format!("{}/", a.display()))
                .collect::<Vec<_>>()
        })
        .collect();
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    };
    for dir in &dirs {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        builder.append_data(&mut h, dir, std::io::empty())?;
    }
    for f in sorted {
        match &f.content {
            Content::File(from) => {
                let file =
                    File::open(from).with_context(|| format!("reading {}", from.display()))?;
                let mut h = header(tar::EntryType::Regular, f.mode, file.metadata()?.len());
                builder.append_data(&mut h, &f.path, file)?;
            }
            Content::Text(text) => {
                let mut h = header(tar::EntryType::Regular, f.mode, text.len() as u64);
                builder.append_data(&mut h, &f.path, text.as_bytes())?;
            }
            Content::Bytes(bytes) => {
                let mut h = header(tar::EntryType::Regular, f.mode, bytes.len() as u64);
                builder.append_data(&mut h, &f.path, &bytes[..])?;
            }
        }
    }
    builder.into_inner()?.sync_all()?;
    Ok(fs::metadata(tarball)?.len())
}

/// `crane registry serve` on 127.0.0.1, blobs in a temporary directory.
struct Registry {
    process: Option<Process>,
    port: u16,
}

impl Registry {
    fn start(crane: &Path, work: &Path) -> Result<Self> {
        let port = free_ports(1)?[0];
        let blobs = work.join("registry");
        fs::create_dir_all(&blobs)?;
        let mut cmd = Command::new(crane);
        cmd.args(["registry", "serve", "--address"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--disk")
            .arg(&blobs);
        let log = work.join("registry.log");
        let mut registry = Self {
            process: Some(Process::spawn("crane registry", cmd, &log)?),
            port,
        };
        let began = Instant::now();
        while !is_listening(port) {
            if let Some(p) = registry.process.as_mut() {
                p.check_running()?;
            }
            if began.elapsed() > Duration::from_secs(20) {
                bail!(
                    "crane registry serve is not listening on 127.0.0.1:{port} after 20 s:\n{}",
                    log_tail(&log, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(registry)
    }

    fn stop(mut self) -> Result<()> {
        if let Some(mut p) = self.process.take() {
            p.check_running()?;
            p.stop(DEFAULT_GRACE);
        }
        Ok(())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop(DEFAULT_GRACE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_reproducible_with_their_directories() {
        let dir = tempfile::tempdir().unwrap();
        let files = || {
            vec![
                LayerFile::text("etc/passwd", PASSWD, 0o644),
                LayerFile::text("etc/group", GROUP, 0o644),
            ]
        };
        let (a, b) = (dir.path().join("a.tar"), dir.path().join("b.tar"));
        write_layer(&a, &files()).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        write_layer(&b, &files()).unwrap();
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap(), "same bytes");
        let mut archive = tar::Archive::new(File::open(&a).unwrap());
        let entries: Vec<(String, u32, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            [
                ("etc/".to_owned(), 0o755, 0),
                ("etc/group".to_owned(), 0o644, 0),
                ("etc/passwd".to_owned(), 0o644, 0),
            ]
        );
        assert!(PASSWD.contains(":65532:65532:"));
    }

    #[test]
    fn ca_bundle_is_sorted_and_newline_terminated() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("b.crt"), "b").unwrap();
        fs::write(d.join("a.crt"), "a\n").unwrap();
        fs::write(d.join("B.crt"), "B").unwrap();
        fs::write(d.join("README"), "not a certificate").unwrap();
        assert_eq!(concat_certs(d).unwrap(), b"B\na\nb\n");
        fs::remove_file(d.join("a.crt")).unwrap();
        fs::remove_file(d.join("b.crt")).unwrap();
        fs::remove_file(d.join("B.crt")).unwrap();
        assert!(concat_certs(d).is_err(), "no certificates is an error");
    }

    #[test]
    fn symlinks_resolve_inside_the_package() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("lib/x86_64-linux-gnu")).unwrap();
        fs::create_dir_all(r.join("lib64")).unwrap();
        fs::write(r.join("lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"), b"ld").unwrap();
        // Absolute, as Debian's libc6 ships it: must not resolve to this machine's file.
        std::os::unix::fs::symlink(
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            r.join("lib64/ld-linux-x86-64.so.2"),
        )
        .unwrap();
        std::os::unix::fs::symlink("ld-linux-x86-64.so.2", r.join("lib/x86_64-linux-gnu/ld.so"))
            .unwrap();
        let roots = [r.to_owned()];
        for p in ["lib64/ld-linux-x86-64.so.2", "lib/x86_64-linux-gnu/ld.so"] {
            assert_eq!(
                find_in(&roots, p).unwrap(),
                r.join("lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
            );
        }
        let missing = find_in(&roots, "lib/x86_64-linux-gnu/libc.so.6").unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("/lib/x86_64-linux-gnu/libc.so.6")
        );
    }
}
