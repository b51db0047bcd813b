//! A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver and, optionally,
//! kube-controller-manager, kube-scheduler and kwok with simulated GPU nodes, each a
//! process of the pinned binaries, with its own PKI and a run directory for data, logs
//! and kubeconfigs.
//!
//! [`ControlPlaneBuilder`] chooses the components and, with
//! [`ControlPlaneBuilder::with_stores`], PostgreSQL, SeaweedFS (S3) and fake-gcs-server
//! ([`crate::stores`]); the operator and webhook of later issues are started through
//! [`ControlPlane::spawn`] after it is up, so they are stopped first and their logs sit
//! beside the others.

use std::{
    fmt,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, atomic::AtomicBool, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{ConfigMap, Node, ServiceAccount};
use kube::{Api, api::PostParams};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    components::{self, ApiServer, Etcd},
    hygiene::{self, Teardown},
    kubeconfig,
    nodes::{self, SimNode},
    pki::{ClientIdentity, Pki, SYSTEM_MASTERS},
    ports::{self, LOOPBACK},
    process::{self, DEFAULT_GRACE, Process},
    resources,
    stores::{self, StoreBins, StoreTimings, Stores},
    supervisor::{self, Shared, Supervisor},
    testbins::TestBins,
    wait,
};

/// Set to keep the run directory (data, logs, kubeconfigs) after a clean run too.
pub const KEEP_ENV: &str = "LOTABOTS_E2E_KEEP";

/// User name of the admin client certificate (group `system:masters`).
pub const ADMIN_USER: &str = "lotabots-e2e-admin";

/// How long each start-up step may take. Generous: on 2 busy cores with a cold page
/// cache the API server alone has taken over 10 s.
const STEP_TIMEOUT: Duration = Duration::from_secs(90);

/// Progress messages during start-up (`up` prints them; tests print them to stderr).
pub type Progress = Arc<dyn Fn(&str) + Send + Sync>;

/// Which components to start, and how.
#[derive(Clone)]
pub struct ControlPlaneBuilder {
    controller_manager: bool,
    scheduler: bool,
    kwok: bool,
    crds: bool,
    stores: bool,
    nodes: Vec<SimNode>,
    grace: Duration,
    progress: Progress,
}

impl fmt::Debug for ControlPlaneBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlaneBuilder")
            .field("controller_manager", &self.controller_manager)
            .field("scheduler", &self.scheduler)
            .field("kwok", &self.kwok)
            .field("crds", &self.crds)
            .field("stores", &self.stores)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

impl Default for ControlPlaneBuilder {
    /// Every component, no nodes, no CRDs, progress to stderr.
    fn default() -> Self {
        Self {
            controller_manager: true,
            scheduler: true,
            kwok: true,
            crds: false,
            stores: false,
            nodes: Vec::new(),
            grace: DEFAULT_GRACE,
            progress: Arc::new(|m: &str| eprintln!("lotabots-e2e: {m}")),
        }
    }
}

impl ControlPlaneBuilder {
    /// Without kube-controller-manager (no namespaces GC, no ServiceAccounts, no
    /// `kube-root-ca.crt`).
    pub fn without_controller_manager(mut self) -> Self {
        self.controller_manager = false;
        self
    }

    /// Without kube-scheduler (pods stay Pending unless they name a node).
    pub fn without_scheduler(mut self) -> Self {
        self.scheduler = false;
        self
    }

    /// Without kwok (and so without nodes).
    pub fn without_kwok(mut self) -> Self {
        self.kwok = false;
        self.nodes.clear();
        self
    }

    /// Installs the project's CRDs (`config/crd/bases`) and waits until they are
    /// Established.
    pub fn with_crds(mut self) -> Self {
        self.crds = true;
        self
    }

    /// Also starts the stores of the evidence store — PostgreSQL 15, SeaweedFS's S3
    /// gateway and fake-gcs-server, on 127.0.0.1 with their data in the run directory
    /// ([`crate::stores`]) — after the Kubernetes components, so they are stopped first;
    /// [`ControlPlane::stores`] tells how to reach them.
    pub fn with_stores(mut self) -> Self {
        self.stores = true;
        self
    }

    /// Simulated nodes kwok keeps Ready; start-up waits for them.
    pub fn nodes(mut self, nodes: Vec<SimNode>) -> Self {
        self.nodes = nodes;
        self
    }

    /// Time each component gets between SIGTERM and SIGKILL.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Where progress messages go.
    pub fn progress(mut self, progress: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.progress = Arc::new(progress);
        self
    }

    /// Starts everything and waits until it works. On failure, everything started is
    /// stopped again and the error carries the failing component's log tail and the
    /// (kept) run directory.
    pub async fn start(self) -> Result<ControlPlane> {
        let say = self.progress.clone();
        say("locating the test binaries (e2e/testbins/build.sh; a cold build takes ~16 min)");
        let bins = tokio::task::spawn_blocking(TestBins::locate).await??;
        say(&format!(
            "binaries in {} ({:.1} s)",
            bins.dir().display(),
            bins.took.as_secs_f64()
        ));
        let store_bins = if self.stores {
            say("locating the stores (e2e/setup-stores.sh)");
            let b = tokio::task::spawn_blocking(StoreBins::locate).await??;
            say(&format!(
                "stores in {} ({:.1} s)",
                b.dir().display(),
                b.took.as_secs_f64()
            ));
            Some(b)
        } else {
            None
        };
        let run_dir = tempfile::Builder::new()
            .prefix("lotabots-e2e-")
            .tempdir()
            .context("creating the run directory")?
            .keep();
        let keep = Arc::new(AtomicBool::new(std::env::var_os(KEEP_ENV).is_some()));
        let sup = Supervisor::start(self.grace, run_dir.clone(), keep.clone())?;
        match self
            .start_in(&bins, store_bins.as_ref(), &run_dir, &sup)
            .await
        {
            Ok((client, kubeconfig, api, stores, timings)) => Ok(ControlPlane {
                bins,
                run_dir,
                keep,
                sup,
                client,
                kubeconfig,
                api_url: api.url(),
                issuer: api.issuer(),
                nodes: self.nodes,
                stores,
                timings,
            }),
            Err(e) => {
                keep.store(true, Ordering::SeqCst);
                let logs = log_summary(&mut supervisor::lock(&sup));
                supervisor::lock(&sup).stop_all(|_| {});
                Err(anyhow::anyhow!(
                    "the control plane did not start: {e:#}\nrun directory kept: {}\n{logs}",
                    run_dir.display()
                ))
            }
        }
    }

    async fn start_in(
        &self,
        bins: &TestBins,
        store_bins: Option<&StoreBins>,
        run: &Path,
        sup: &Shared,
    ) -> Result<(
        kube::Client,
        PathBuf,
        ApiServer,
        Option<Stores>,
        StartTimings,
    )> {
        let say = &self.progress;
        let began = Instant::now();
        let mut t = StartTimings::default();
        let logs = run.join("logs");
        std::fs::create_dir_all(&logs)?;
        let spawn = |name: &str, program: &str, args: Vec<String>| -> Result<()> {
            let mut cmd = Command::new(bins.bin(program));
            cmd.args(args).current_dir(run);
            let p = Process::spawn(name, cmd, &logs.join(format!("{name}.log")))?;
            supervisor::lock(sup).adopt(p);
            Ok(())
        };

        let pki = Pki::generate(&run.join("pki"), &[components::FIRST_SERVICE_IP.parse()?])?;
        t.pki = began.elapsed();

        let [client_port, peer_port, api_port] = ports::free_ports(3)?[..] else {
            unreachable!("three ports asked for")
        };
        let etcd = Etcd {
            client_port,
            peer_port,
            data_dir: run.join("etcd"),
        };
        say(&format!("starting etcd on {}", etcd.client_url()));
        spawn("etcd", "etcd", etcd.args())?;
        self.wait_alive(sup, "etcd /health", || async move {
            let body = http_get(client_port, "/health").await?;
            Ok(body.contains("\"health\":\"true\"").then_some(()))
        })
        .await?;
        t.etcd = began.elapsed();

        let api = ApiServer {
            port: api_port,
            etcd_url: etcd.client_url(),
            client_ca: pki.ca.cert.clone(),
            tls_cert: pki.apiserver.cert.clone(),
            tls_key: pki.apiserver.key.clone(),
            sa_signing_key: pki.service_account_key.clone(),
            sa_public_key: pki.service_account_pub.clone(),
            cert_dir: run.join("apiserver"),
        };
        say(&format!("starting kube-apiserver on {}", api.url()));
        spawn("kube-apiserver", "kube-apiserver", api.args())?;
        let kubeconfig_for = |stem: &str, user: &str| -> Result<PathBuf> {
            let cert = pki.client_cert(
                stem,
                &ClientIdentity {
                    user,
                    groups: &[SYSTEM_MASTERS],
                },
            )?;
            let path = run.join(format!("{stem}.kubeconfig"));
            kubeconfig::write(&path, &api.url(), &pki.ca.cert, user, &cert)?;
            Ok(path)
        };
        let admin = kubeconfig_for("admin", ADMIN_USER)?;
        let client = kubeconfig::client(&admin).await?;
        self.wait_alive(sup, "kube-apiserver /readyz", || {
            let client = client.clone();
            async move {
                let req = http::Request::get("/readyz").body(Vec::new())?;
                Ok((client.request_text(req).await?.trim() == "ok").then_some(()))
            }
        })
        .await?;
        t.apiserver = began.elapsed();
        say(&format!(
            "kube-apiserver ready ({:.1} s after start)",
            t.apiserver.as_secs_f64()
        ));

        if self.controller_manager {
            // Each component authenticates as itself (its CN shows in audit and logs);
            // all are in system:masters, as a single-node kubeadm control plane
            // effectively is, so no per-controller RBAC is needed.
            let kc = kubeconfig_for("kube-controller-manager", "system:kube-controller-manager")?;
            say("starting kube-controller-manager");
            spawn(
                "kube-controller-manager",
                "kube-controller-manager",
                components::controller_manager_args(
                    &kc,
                    &pki.ca.cert,
                    &pki.ca.key,
                    &pki.service_account_key,
                ),
            )?;
        }
        if self.scheduler {
            let kc = kubeconfig_for("kube-scheduler", "system:kube-scheduler")?;
            say("starting kube-scheduler");
            spawn(
                "kube-scheduler",
                "kube-scheduler",
                components::scheduler_args(&kc),
            )?;
        }
        if self.kwok {
            let kc = kubeconfig_for("kwok", "system:kwok")?;
            say("starting kwok");
            spawn(
                "kwok",
                "kwok",
                components::kwok_args(&kc, &bins.kwok_stages()),
            )?;
        }
        if self.crds {
            say("installing the CRDs from config/crd/bases");
            let names = resources::apply_crds(&client).await?;
            resources::wait_established(&client, &names, STEP_TIMEOUT).await?;
            t.crds = Some(began.elapsed());
        }
        if self.controller_manager {
            // The controller-manager works once it has published the root CA and
            // created the default ServiceAccount of a namespace.
            let (cms, sas) = (
                Api::<ConfigMap>::namespaced(client.clone(), "default"),
                Api::<ServiceAccount>::namespaced(client.clone(), "default"),
            );
            self.wait_alive(
                sup,
                "kube-controller-manager (kube-root-ca.crt, default ServiceAccount)",
                || {
                    let (cms, sas) = (cms.clone(), sas.clone());
                    async move {
                        let ready = cms.get_opt("kube-root-ca.crt").await?.is_some()
                            && sas.get_opt("default").await?.is_some();
                        Ok(ready.then_some(()))
                    }
                },
            )
            .await?;
            t.controller_manager = Some(began.elapsed());
            say(&format!(
                "kube-controller-manager ready ({:.1} s)",
                began.elapsed().as_secs_f64()
            ));
        }
        if self.kwok && !self.nodes.is_empty() {
            let api_nodes = Api::<Node>::all(client.clone());
            for n in &self.nodes {
                api_nodes
                    .create(&PostParams::default(), &n.to_node())
                    .await
                    .with_context(|| format!("creating node {}", n.name))?;
            }
            let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
            self.wait_alive(sup, "the kwok nodes to be Ready", || {
                let (api_nodes, names) = (api_nodes.clone(), names.clone());
                async move {
                    for name in &names {
                        if !api_nodes
                            .get_opt(name)
                            .await?
                            .is_some_and(|n| nodes::is_ready(&n))
                        {
                            return Ok(None);
                        }
                    }
                    Ok(Some(()))
                }
            })
            .await?;
            t.nodes = Some(began.elapsed());
            say(&format!(
                "{} kwok nodes Ready ({:.1} s)",
                names.len(),
                began.elapsed().as_secs_f64()
            ));
        }
        let stores = match store_bins {
            Some(store_bins) => {
                let at = began.elapsed();
                let (stores, st) = stores::start(store_bins, run, sup, say, STEP_TIMEOUT).await?;
                t.stores = Some(StoreTimings {
                    postgres: at + st.postgres,
                    s3: at + st.s3,
                    gcs: at + st.gcs,
                });
                Some(stores)
            }
            None => None,
        };
        supervisor::lock(sup).check_running()?;
        t.total = began.elapsed();
        Ok((client, admin, api, stores, t))
    }

    /// [`wait::until`], failing at once when a component has died meanwhile.
    async fn wait_alive<T, F, Fut>(&self, sup: &Shared, what: &str, probe: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        wait::until_alive(
            what,
            STEP_TIMEOUT,
            || supervisor::lock(sup).check_running(),
            probe,
        )
        .await
    }
}

/// Start-up milestones, each measured from the start of the control plane (after the
/// binaries were located).
#[derive(Clone, Debug, Default)]
pub struct StartTimings {
    /// PKI generated.
    pub pki: Duration,
    /// etcd answered `/health`.
    pub etcd: Duration,
    /// kube-apiserver answered `/readyz` with `ok`.
    pub apiserver: Duration,
    /// CRDs Established, if installed.
    pub crds: Option<Duration>,
    /// kube-controller-manager had published `kube-root-ca.crt` and the default
    /// ServiceAccount, if started.
    pub controller_manager: Option<Duration>,
    /// Every simulated node Ready, if any.
    pub nodes: Option<Duration>,
    /// PostgreSQL, the S3 gateway and fake-gcs-server answering, if started.
    pub stores: Option<StoreTimings>,
    /// Everything up.
    pub total: Duration,
}

impl fmt::Display for StartTimings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |d: Duration| format!("{:.1} s", d.as_secs_f64());
        write!(
            f,
            "up in {} (pki {}, etcd healthy {}, apiserver /readyz {}",
            s(self.total),
            s(self.pki),
            s(self.etcd),
            s(self.apiserver)
        )?;
        if let Some(d) = self.crds {
            write!(f, ", CRDs Established {}", s(d))?;
        }
        if let Some(d) = self.controller_manager {
            write!(f, ", controller-manager working {}", s(d))?;
        }
        if let Some(d) = self.nodes {
            write!(f, ", nodes Ready {}", s(d))?;
        }
        if let Some(st) = &self.stores {
            write!(
                f,
                ", PostgreSQL {}, S3 {}, GCS {}",
                s(st.postgres),
                s(st.s3),
                s(st.gcs)
            )?;
        }
        write!(f, ")")
    }
}

/// A running control plane. Dropping it stops everything (as [`ControlPlane::shutdown`]).
pub struct ControlPlane {
    bins: TestBins,
    run_dir: PathBuf,
    keep: Arc<AtomicBool>,
    sup: Shared,
    client: kube::Client,
    kubeconfig: PathBuf,
    api_url: String,
    issuer: String,
    nodes: Vec<SimNode>,
    stores: Option<Stores>,
    timings: StartTimings,
}

impl fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlane")
            .field("api_url", &self.api_url)
            .field("run_dir", &self.run_dir)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// A builder with every component and no nodes.
    pub fn builder() -> ControlPlaneBuilder {
        ControlPlaneBuilder::default()
    }

    /// A client authenticated as the admin user (`system:masters`).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The admin kubeconfig file.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's URL (`https://127.0.0.1:PORT`).
    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// The ServiceAccount token issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The test binaries.
    pub fn bins(&self) -> &TestBins {
        &self.bins
    }

    /// The run directory (data, logs, PKI, kubeconfigs).
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The simulated nodes started with it.
    pub fn nodes(&self) -> &[SimNode] {
        &self.nodes
    }

    /// The stores, when started [`with_stores`](ControlPlaneBuilder::with_stores).
    pub fn stores(&self) -> Result<&Stores> {
        self.stores
            .as_ref()
            .context("this environment was started without ControlPlaneBuilder::with_stores")
    }

    /// Start-up timings.
    pub fn timings(&self) -> &StartTimings {
        &self.timings
    }

    /// Keeps the run directory after shutdown (a failed test wants its logs).
    pub fn keep_run_dir(&self) {
        self.keep.store(true, Ordering::SeqCst);
    }

    /// `kubectl` with the admin kubeconfig, as a tokio command.
    pub fn kubectl(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(self.bins.bin("kubectl"));
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .kill_on_drop(true);
        cmd
    }

    /// Runs `kubectl ARGS` with the admin kubeconfig and returns its stdout; fails with
    /// its stderr when it exits non-zero.
    pub async fn kubectl_out(&self, args: &[&str]) -> Result<String> {
        let out = self
            .kubectl()
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .with_context(|| format!("running kubectl {}", args.join(" ")))?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts another long-running process as part of this environment (the operator,
    /// the webhook, a store); its output goes to `logs/<name>.log`, and it is stopped
    /// before everything started earlier. Returns its pid.
    pub fn spawn(&self, name: &str, cmd: Command) -> Result<u32> {
        let p = Process::spawn(
            name,
            cmd,
            &self.run_dir.join("logs").join(format!("{name}.log")),
        )?;
        let pid = p.pid();
        supervisor::lock(&self.sup).adopt(p);
        Ok(pid)
    }

    /// Fails (with its log tail) if any component has exited.
    pub fn check_running(&self) -> Result<()> {
        supervisor::lock(&self.sup).check_running()
    }

    /// Every running component's log path and last lines, for a failure report.
    pub fn diagnostics(&self) -> String {
        let mut sup = supervisor::lock(&self.sup);
        let alive = sup
            .check_running()
            .err()
            .map(|e| format!("{e:#}\n"))
            .unwrap_or_default();
        format!(
            "{alive}run directory: {}\n{}",
            self.run_dir.display(),
            log_summary(&mut sup)
        )
    }

    /// Stops everything, newest first, and checks that nothing is left: no process, no
    /// listening port. Idempotent: later calls return the same report.
    pub fn shutdown(&self) -> Teardown {
        let mut sup = supervisor::lock(&self.sup);
        let reaper = sup.reaper_pid();
        let stopped = sup.stop_all(|_| {});
        hygiene::check(
            stopped,
            reaper,
            self.run_dir.clone(),
            self.keep.load(Ordering::SeqCst),
        )
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn log_summary(sup: &mut Supervisor) -> String {
    const TAIL: usize = 12;
    sup.processes()
        .iter()
        .map(|p| {
            format!(
                "--- {} (pid {}), log {} (last {TAIL} lines):\n{}\n",
                p.name(),
                p.pid(),
                p.log().display(),
                process::log_tail(p.log(), TAIL)
            )
        })
        .collect()
}

/// A plain HTTP/1.0 GET to 127.0.0.1:`port` (etcd's health endpoint), returning the raw
/// response.
pub(crate) async fn http_get(port: u16, path: &str) -> Result<String> {
    let mut s = TcpStream::connect((LOOPBACK, port)).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {LOOPBACK}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    Ok(buf)
}
