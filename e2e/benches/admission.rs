//! Admission through the API server: what the lotabots webhook costs a pod create.
//!
//! Pods are created by server-side dry run (`POST …/pods?dryRun=All`: admission runs in
//! full, nothing is stored), by one sequential client and by eight concurrent ones, in
//! three configurations registered in turn, interleaved round by round so that drift of
//! this shared machine hits all three alike:
//!
//! - **none**: no webhook configuration;
//! - **noop**: the production webhook configuration (same rules, selectors, timeouts)
//!   pointing at a do-nothing webhook that decodes the AdmissionReview and allows it —
//!   the floor any webhook pays on this API server (this binary, re-run as a child);
//! - **lotabots**: the same configuration pointing at the real `lotabots-webhook`
//!   binary with the default policy, as a separate process.
//!
//! Reports throughput, p50 and p99 per configuration and client count, the webhooks'
//! resident memory, and whether ours meets the target (≥ 90 % of the no-op's throughput
//! at eight clients, p50 within 0.3 ms of it sequentially). Figures, not assertions.
//!
//! `cargo build --release -p lotabots-webhook && cargo bench -p lotabots-e2e --bench admission`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{HostPathVolumeSource, Pod, ServiceAccount, Volume};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use lotabots_e2e::stack::webhook_configuration;
use lotabots_e2e::{ControlPlane, pods, ports, procfs, resources, wait};

/// First argument that makes this binary the do-nothing webhook.
const NOOP_ARG: &str = "--serve-noop-webhook";
/// Pods with this name prefix are denied by the no-op webhook, so the bench can tell that
/// its configuration is in force; every other pod is allowed.
const MARKER: &str = "bench-marker";
const NAMESPACE: &str = "bench";
const ROUNDS: usize = 3;
const WARMUP: usize = 50;
const SEQUENTIAL: usize = 300;
const CLIENTS: usize = 8;
const PER_CLIENT: usize = 150;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(NOOP_ARG) {
        let [_, _, cert, key, listen] = &args[..] else {
            bail!("usage: {NOOP_ARG} CERT KEY ADDR");
        };
        return noop::serve(Path::new(cert), Path::new(key), listen);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let plane = rt.block_on(
        ControlPlane::builder()
            .without_scheduler()
            .without_kwok()
            .start(),
    )?;
    let outcome = rt.block_on(run(&plane));
    if outcome.is_err() {
        eprintln!("{}", plane.diagnostics());
    }
    eprintln!("{}", plane.shutdown());
    outcome
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    None,
    Noop,
    Lotabots,
}

impl Config {
    const ALL: [Config; 3] = [Config::None, Config::Noop, Config::Lotabots];

    fn label(self) -> &'static str {
        match self {
            Config::None => "no webhook",
            Config::Noop => "do-nothing webhook",
            Config::Lotabots => "lotabots-webhook",
        }
    }
}

/// Latencies (ms) of every request, and each round's throughput (requests/s).
#[derive(Default)]
struct Samples {
    latencies_ms: Vec<f64>,
    rates: Vec<f64>,
}

impl Samples {
    fn add(&mut self, latencies: Vec<Duration>, elapsed: Duration) {
        self.rates
            .push(latencies.len() as f64 / elapsed.as_secs_f64());
        self.latencies_ms
            .extend(latencies.iter().map(|d| d.as_secs_f64() * 1e3));
    }

    fn quantile(&self, q: f64) -> f64 {
        let mut v = self.latencies_ms.clone();
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q).round() as usize]
    }

    fn median_rate(&self) -> f64 {
        let mut v = self.rates.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
}

/// A webhook server process and its URL.
struct Server {
    url: String,
    pid: u32,
}

async fn run(plane: &ControlPlane) -> Result<()> {
    let client = plane.client();
    let _ = rustls::crypto::ring::default_provider().install_default();
    resources::ensure_namespace(&client, NAMESPACE).await?;
    // The ServiceAccount admission plugin needs the namespace's default account.
    let sas = Api::<ServiceAccount>::namespaced(client.clone(), NAMESPACE);
    wait::until(
        "the default ServiceAccount",
        Duration::from_secs(60),
        || {
            let sas = sas.clone();
            async move { Ok(sas.get_opt("default").await?.map(|_| ())) }
        },
    )
    .await?;

    let dir = plane.run_dir().join("bench-admission");
    std::fs::create_dir_all(&dir)?;
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])?;
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_path, cert.cert.pem())?;
    std::fs::write(&key_path, cert.signing_key.serialize_pem())?;
    let ca = cert.cert.pem();

    let noop = start_noop(plane, &cert_path, &key_path)?;
    let ours = start_lotabots(plane, &cert_path, &key_path)?;
    for s in [&noop, &ours] {
        let port: u16 = s.url.rsplit(':').next().context("port")?.parse()?;
        wait::until(
            "a webhook to listen",
            Duration::from_secs(30),
            || async move { Ok(ports::is_listening(port).then_some(())) },
        )
        .await?;
    }

    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE);
    let configs = Api::<ValidatingWebhookConfiguration>::all(client.clone());
    let mut seq: [Samples; 3] = Default::default();
    let mut conc: [Samples; 3] = Default::default();
    for round in 1..=ROUNDS {
        for (i, config) in Config::ALL.into_iter().enumerate() {
            let url = match config {
                Config::None => None,
                Config::Noop => Some(noop.url.as_str()),
                Config::Lotabots => Some(ours.url.as_str()),
            };
            switch(&configs, &pods, config, url, &ca).await?;
            let _ = sequential(&pods, WARMUP).await?;
            let (lat, elapsed) = sequential(&pods, SEQUENTIAL).await?;
            seq[i].add(lat, elapsed);
            let (lat, elapsed) = concurrent(&pods).await?;
            conc[i].add(lat, elapsed);
            eprintln!(
                "round {round}: {:<20} 1 client {:>7.0}/s, {CLIENTS} clients {:>7.0}/s",
                config.label(),
                seq[i].rates.last().copied().unwrap_or_default(),
                conc[i].rates.last().copied().unwrap_or_default(),
            );
        }
    }

    println!(
        "\nadmission through kube-apiserver, server-side dry-run pod creates, {ROUNDS} interleaved rounds"
    );
    println!(
        "{:<20} {:>8} {:>10} {:>9} {:>9} | {:>10} {:>9} {:>9}",
        "configuration", "", "1 client/s", "p50 ms", "p99 ms", "8 clients/s", "p50 ms", "p99 ms"
    );
    for (i, config) in Config::ALL.into_iter().enumerate() {
        println!(
            "{:<20} {:>8} {:>10.0} {:>9.2} {:>9.2} | {:>10.0} {:>9.2} {:>9.2}",
            config.label(),
            "",
            seq[i].median_rate(),
            seq[i].quantile(0.5),
            seq[i].quantile(0.99),
            conc[i].median_rate(),
            conc[i].quantile(0.5),
            conc[i].quantile(0.99),
        );
    }
    for (name, s) in [("do-nothing webhook", &noop), ("lotabots-webhook", &ours)] {
        println!(
            "{name:<20} RSS now {:>6} KiB, peak {:>6} KiB",
            procfs::rss_kib(s.pid).unwrap_or_default(),
            procfs::peak_rss_kib(s.pid).unwrap_or_default(),
        );
    }
    let share = conc[2].median_rate() / conc[1].median_rate();
    let p50_gap = seq[2].quantile(0.5) - seq[1].quantile(0.5);
    println!(
        "target: lotabots at {CLIENTS} clients = {:.1} % of the do-nothing webhook (≥ 90 %: {}); \
         sequential p50 {:+.3} ms (≤ 0.3 ms: {})",
        share * 100.0,
        if share >= 0.9 { "met" } else { "NOT met" },
        p50_gap,
        if p50_gap <= 0.3 { "met" } else { "NOT met" },
    );
    Ok(())
}

fn start_noop(plane: &ControlPlane, cert: &Path, key: &Path) -> Result<Server> {
    let port = ports::free_ports(1)?[0];
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg(NOOP_ARG)
        .arg(cert)
        .arg(key)
        .arg(format!("127.0.0.1:{port}"));
    let pid = plane.spawn("noop-webhook", cmd)?;
    Ok(Server {
        url: format!("https://127.0.0.1:{port}"),
        pid,
    })
}

/// `target/release/lotabots-webhook`, next to this bench's `deps/` directory.
fn webhook_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .context("the bench binary's directory")?
        .join("lotabots-webhook");
    ensure!(
        bin.is_file(),
        "{} is not built: cargo build --release -p lotabots-webhook",
        bin.display()
    );
    Ok(bin)
}

fn start_lotabots(plane: &ControlPlane, cert: &Path, key: &Path) -> Result<Server> {
    let p = ports::free_ports(2)?;
    let mut cmd = std::process::Command::new(webhook_binary()?);
    cmd.arg("serve")
        .arg(format!("--listen=127.0.0.1:{}", p[0]))
        .arg(format!("--ops-listen=127.0.0.1:{}", p[1]))
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .env("RUST_LOG", "warn");
    let pid = plane.spawn("lotabots-webhook", cmd)?;
    Ok(Server {
        url: format!("https://127.0.0.1:{}", p[0]),
        pid,
    })
}

/// Registers the production configuration pointing at `url` (or none), and waits until
/// the API server's admission chain uses it.
async fn switch(
    configs: &Api<ValidatingWebhookConfiguration>,
    pods: &Api<Pod>,
    config: Config,
    url: Option<&str>,
    ca: &str,
) -> Result<()> {
    let name = "lotabots-webhook";
    match configs.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    if let Some(url) = url {
        let vwc = webhook_configuration(url, ca, None)?;
        configs.create(&PostParams::default(), &vwc).await?;
    }
    // The marker pod mounts the runtime socket: our policy denies it, the no-op webhook
    // denies it by name, and without a webhook it is admitted.
    let marker = marker_pod();
    wait::until(
        &format!("the API server to use: {}", config.label()),
        Duration::from_secs(60),
        || {
            let (pods, marker) = (pods.clone(), marker.clone());
            async move {
                let outcome = pods.create(&dry_run(), &marker).await;
                let in_force = match (config, outcome) {
                    (Config::None, Ok(_)) => true,
                    (Config::Noop, Err(kube::Error::Api(s))) => s.message.contains("noop-marker"),
                    (Config::Lotabots, Err(kube::Error::Api(s))) => {
                        s.message.contains("pods.webhook.lotabots.io")
                            && s.message.contains("protectedPaths")
                    }
                    _ => false,
                };
                Ok(in_force.then_some(()))
            }
        },
    )
    .await
}

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..Default::default()
    }
}

fn marker_pod() -> Pod {
    let mut pod = pods::pod(MARKER, "default", &[], None);
    let spec = pod.spec.as_mut().expect("pods::pod has a spec");
    spec.volumes = Some(vec![Volume {
        name: "host".into(),
        host_path: Some(HostPathVolumeSource {
            path: "/var/run/containerd/containerd.sock".into(),
            ..Default::default()
        }),
        ..Default::default()
    }]);
    spec.containers[0].volume_mounts = Some(vec![k8s_openapi::api::core::v1::VolumeMount {
        name: "host".into(),
        mount_path: "/run/containerd.sock".into(),
        ..Default::default()
    }]);
    pod
}

/// `n` dry-run creates one after the other; their latencies and the time they took.
async fn sequential(pods: &Api<Pod>, n: usize) -> Result<(Vec<Duration>, Duration)> {
    let pod = pods::pod("bench-pod", "default", &[], None);
    let params = dry_run();
    let mut latencies = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        pods.create(&params, &pod)
            .await
            .context("a compliant pod")?;
        latencies.push(t.elapsed());
    }
    Ok((latencies, start.elapsed()))
}

/// [`CLIENTS`] tasks of [`PER_CLIENT`] creates each, started together.
async fn concurrent(pods: &Api<Pod>) -> Result<(Vec<Duration>, Duration)> {
    let start = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let pods = pods.clone();
            tokio::spawn(async move { sequential(&pods, PER_CLIENT).await })
        })
        .collect();
    let mut latencies = Vec::with_capacity(CLIENTS * PER_CLIENT);
    for t in tasks {
        latencies.extend(t.await??.0);
    }
    Ok((latencies, start.elapsed()))
}

/// The do-nothing webhook: decodes each AdmissionReview and allows it (denying only the
/// bench's marker pod, so the bench can see the configuration in force).
mod noop {
    use std::path::Path;
    use std::sync::Arc;

    use anyhow::{Context, Result};
    use axum::body::Bytes;
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use lotabots_webhook::{server::serve_tls, tls};
    use serde_json::{Value, json};

    use super::MARKER;

    pub fn serve(cert: &Path, key: &Path, listen: &str) -> Result<()> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = tls::server_config(&std::fs::read(cert)?, &std::fs::read(key)?)
            .context("TLS configuration")?;
        // Two workers, like the real webhook on this machine's two cores.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind(listen).await?;
            let app = axum::Router::new().fallback(review);
            serve_tls(listener, Arc::new(tls::TlsStore::new(config)), app).await?;
            Ok(())
        })
    }

    async fn review(body: Bytes) -> Response {
        let Ok(review) = serde_json::from_slice::<Value>(&body) else {
            return (StatusCode::BAD_REQUEST, "not an AdmissionReview").into_response();
        };
        let request = &review["request"];
        let marker = request["name"]
            .as_str()
            .or_else(|| request["object"]["metadata"]["name"].as_str())
            .is_some_and(|n| n.starts_with(MARKER));
        let mut response = json!({"uid": request["uid"], "allowed": !marker});
        if marker {
            response["status"] = json!({"code": 403, "message": "noop-marker"});
        }
        axum::Json(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": response,
        }))
        .into_response()
    }
}
