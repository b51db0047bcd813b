//! Command line: `probe`, `serve` and `profiles`.
//!
//! Exit codes: 0 success; 1 the GPU backend could not start or the probe failed (no
//! NVML library, driver not loaded, a device query that everything depends on failed);
//! 2 unusable input (bad arguments, a bad nonce, an unknown or malformed profile).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use lotabots_crds::evidence::{NONCE_LEN, NonceOrigin, parse_nonce};

use crate::backend::{self, BackendChoice, BackendError, ProbeRequest};
use crate::operator_client::OperatorClient;

/// lotabots node agent: GPU evidence from NVML or a simulated backend.
#[derive(Debug, Parser)]
#[command(name = "lotabots-agent", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Backend options shared by every subcommand that measures GPUs.
#[derive(Debug, clap::Args)]
pub struct BackendArgs {
    /// GPU backend: `auto` (NVML when libnvidia-ml.so.1 loads, else the simulated
    /// h100-80gb-hbm3 profile), `nvml`, or `simulated:<profile name or file>`.
    #[arg(long, env = "LOTABOTS_BACKEND", default_value = "auto")]
    backend: BackendChoice,
    /// Load NVML from this path instead of the system's libnvidia-ml.so.1.
    #[arg(long, env = "LOTABOTS_NVML_LIB")]
    nvml_lib: Option<String>,
    /// The Kubernetes node name (from the downward API). A simulated backend derives its
    /// GPUs' UUIDs and serials from it, so simulated nodes are distinct machines.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
}

/// How `run` launches the isolated workload pods (GPU self-tests, behavioural probes) on
/// its node.
#[derive(Debug, clap::Args)]
pub struct WorkloadArgs {
    /// Launch no workload pods, even for GpuAttestations with a workloadCheck or
    /// ModelAttestations with a behavioural check.
    #[arg(long, env = "LOTABOTS_NO_WORKLOADS")]
    no_workloads: bool,
    /// Namespace the workload pods are created in (Pod Security `restricted`, deny-all
    /// NetworkPolicy but for the operator).
    #[arg(long, env = "LOTABOTS_WORKLOAD_NAMESPACE", default_value = lotabots_crds::workload::DEFAULT_NAMESPACE)]
    workload_namespace: String,
    /// `runtimeClassName` of the workload pods (e.g. `gvisor`, `kata-qemu`, `nvidia`);
    /// unset: the cluster's default runtime.
    #[arg(long, env = "LOTABOTS_WORKLOAD_RUNTIME_CLASS")]
    workload_runtime_class: Option<String>,
    /// Workload pods alive on this node at once; further requests wait for the next round.
    #[arg(long, env = "LOTABOTS_MAX_WORKLOAD_PODS", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    max_workload_pods: u16,
    /// ConfigMap in the workload namespace holding the operator's CA certificate
    /// (`ca.crt`), projected into each workload pod.
    #[arg(
        long,
        env = "LOTABOTS_OPERATOR_CA_CONFIGMAP",
        default_value = "lotabots-operator-ca"
    )]
    operator_ca_configmap: String,
    /// The operator URL the workload pods post their results to; default: --operator-url.
    #[arg(long, env = "LOTABOTS_WORKLOAD_OPERATOR_URL")]
    workload_operator_url: Option<String>,
    /// How long a failed workload pod is kept (for its logs) before it is deleted, e.g. `10m`.
    #[arg(long, env = "LOTABOTS_WORKLOAD_TTL", default_value = "10m", value_parser = duration_arg)]
    workload_ttl: Duration,
    /// CPU each workload container requests (`1`, `500m`); no CPU limit is set.
    #[arg(long, env = "LOTABOTS_WORKLOAD_CPU", default_value = crate::launcher::spec::DEFAULT_CPU_REQUEST,
          value_parser = cpu_arg)]
    workload_cpu: String,
    /// Memory limit of each workload container (`16Gi`), also its request: enough to load
    /// the largest model a behavioural check runs on the host side.
    #[arg(long, env = "LOTABOTS_WORKLOAD_MEMORY", default_value = crate::launcher::spec::DEFAULT_MEMORY_LIMIT,
          value_parser = memory_arg)]
    workload_memory: String,
}

impl WorkloadArgs {
    /// The launcher's configuration, or none when workloads are off.
    pub fn launcher_config(&self, operator_url: &str) -> Option<crate::launcher::LauncherConfig> {
        if self.no_workloads {
            return None;
        }
        let mut pod = crate::launcher::PodSettings::new(
            self.workload_operator_url
                .as_deref()
                .unwrap_or(operator_url),
        );
        pod.namespace.clone_from(&self.workload_namespace);
        pod.runtime_class = self
            .workload_runtime_class
            .clone()
            .filter(|r| !r.is_empty());
        pod.operator_ca_configmap
            .clone_from(&self.operator_ca_configmap);
        pod.cpu_request.clone_from(&self.workload_cpu);
        pod.memory_limit.clone_from(&self.workload_memory);
        let mut cfg = crate::launcher::LauncherConfig::new(pod);
        cfg.max_pods = usize::from(self.max_workload_pods);
        cfg.finished_ttl = self.workload_ttl;
        Some(cfg)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure the GPUs once and print the evidence.
    Probe {
        #[command(flatten)]
        backend: BackendArgs,
        /// The 32-byte freshness nonce as 64 hex characters (a verifier's challenge); a
        /// random one is used when absent.
        #[arg(long, value_parser = nonce_arg)]
        nonce: Option<[u8; NONCE_LEN]>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
    /// Serve GPU metrics for Prometheus on /metrics (plus /healthz and /readyz).
    Serve {
        #[command(flatten)]
        backend: BackendArgs,
        /// Address to listen on.
        #[arg(long, env = "LOTABOTS_METRICS_ADDR", default_value = "0.0.0.0:9402")]
        listen: SocketAddr,
        /// How often to measure the GPUs, e.g. `15s`, `1m`.
        #[arg(long, env = "LOTABOTS_METRICS_INTERVAL", default_value = "15s", value_parser = duration_arg)]
        interval: Duration,
    },
    /// Run as the node agent (DaemonSet): attest this node to the operator whenever a
    /// GpuAttestation selects it, launch the workload pods asked of this node (GPU
    /// self-tests, ModelAttestations' behavioural probes), and serve `/metrics`,
    /// `/healthz`, `/readyz`.
    Run {
        #[command(flatten)]
        backend: BackendArgs,
        /// Metrics and probes address.
        #[arg(long, env = "LOTABOTS_METRICS_ADDR", default_value = "0.0.0.0:9402")]
        listen: SocketAddr,
        /// How often to refresh the GPU metrics, e.g. `15s`, `1m`.
        #[arg(long, env = "LOTABOTS_METRICS_INTERVAL", default_value = "15s", value_parser = duration_arg)]
        interval: Duration,
        /// The operator's evidence API, e.g. `https://lotabots-operator.lotabots-system.svc:8443`.
        #[arg(long, env = "LOTABOTS_OPERATOR_URL")]
        operator_url: String,
        /// PEM bundle of the CA that issued the operator's certificate.
        #[arg(
            long,
            env = "LOTABOTS_OPERATOR_CA",
            default_value = "/etc/lotabots/operator-ca/ca.crt"
        )]
        operator_ca: PathBuf,
        /// The projected ServiceAccount token (audience `lotabots`).
        #[arg(
            long,
            env = "LOTABOTS_TOKEN_FILE",
            default_value = "/var/run/secrets/lotabots/token"
        )]
        token_file: PathBuf,
        #[command(flatten)]
        workloads: Box<WorkloadArgs>,
    },
    /// List the built-in simulated profiles.
    Profiles,
}

/// Output formats of `probe`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    /// The evidence document, as the agent submits it.
    Json,
    /// A summary table for people.
    Table,
}

fn nonce_arg(s: &str) -> Result<[u8; NONCE_LEN], String> {
    parse_nonce(s).map_err(|e| e.to_string())
}

fn cpu_arg(s: &str) -> Result<String, String> {
    if crate::launcher::spec::is_cpu_quantity(s) {
        Ok(s.to_owned())
    } else {
        Err("not a CPU quantity like 1, 0.5 or 500m".into())
    }
}

fn memory_arg(s: &str) -> Result<String, String> {
    match lotabots_crds::model_attestation::quantity_to_bytes(s) {
        Some(b) if b >= 1 << 20 => Ok(s.to_owned()),
        Some(_) => Err("at least 1Mi".into()),
        None => Err("not a quantity of bytes like 16Gi".into()),
    }
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = s
        .parse::<jiff::Span>()
        .map_err(|e| format!("not a duration like 15s or 1m: {e}"))
        .and_then(|span| {
            jiff::SignedDuration::try_from(span).map_err(|e| format!("not a fixed duration: {e}"))
        })?;
    let d = Duration::try_from(d).map_err(|_| "duration must be positive".to_string())?;
    if d < Duration::from_secs(1) {
        return Err("interval must be at least 1s".into());
    }
    Ok(d)
}

/// Parses the command line, runs it, and maps the outcome to the documented exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOTABOTS_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lotabots-agent: error: {e}");
            ExitCode::from(if e.is_input_error() { 2 } else { 1 })
        }
    }
}

fn select(args: &BackendArgs) -> Result<backend::Selected, BackendError> {
    backend::select(
        &args.backend,
        args.nvml_lib.as_deref(),
        args.node_name.as_deref(),
    )
}

/// Runs one command.
pub fn run(cli: Cli) -> Result<(), BackendError> {
    match cli.command {
        Command::Probe {
            backend,
            nonce,
            format,
        } => {
            let selected = select(&backend)?;
            eprintln!("{}", selected.note);
            let mut req = ProbeRequest::local(backend.node_name.clone().unwrap_or_default());
            if let Some(n) = nonce {
                req.nonce = n;
                req.nonce_origin = NonceOrigin::Verifier;
            }
            let evidence = backend::collect(selected.backend.as_ref(), &req)?;
            match format {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&evidence).expect("evidence serialises")
                ),
                Format::Table => print!("{}", crate::table::render(&evidence)),
            }
            Ok(())
        }
        Command::Serve {
            backend,
            listen,
            interval,
        } => serve(&backend, listen, interval, None),
        Command::Run {
            backend,
            listen,
            interval,
            operator_url,
            operator_ca,
            token_file,
            workloads,
        } => {
            let Some(node) = backend.node_name.clone().filter(|n| !n.is_empty()) else {
                return Err(BackendError::Input(
                    "run needs the node name (--node-name or NODE_NAME from the downward API)"
                        .into(),
                ));
            };
            let ca = std::fs::read(&operator_ca).map_err(|e| {
                BackendError::Input(format!("operator CA {}: {e}", operator_ca.display()))
            })?;
            let operator = OperatorClient::new(&operator_url, &ca, token_file)
                .map_err(|e| BackendError::Input(e.to_string()))?;
            let workloads = workloads.launcher_config(&operator_url);
            serve(
                &backend,
                listen,
                interval,
                Some((node, operator, workloads)),
            )
        }
        Command::Profiles => {
            for name in crate::simulated::builtin_names() {
                println!("{name}");
            }
            Ok(())
        }
    }
}

/// `serve` and `run`: the metrics server, and in `run` mode the attestation loop.
fn serve(
    backend: &BackendArgs,
    listen: SocketAddr,
    interval: Duration,
    attest: Option<(
        String,
        OperatorClient,
        Option<crate::launcher::LauncherConfig>,
    )>,
) -> Result<(), BackendError> {
    let selected = select(backend)?;
    tracing::info!("{}", selected.note);
    let hostname = backend
        .node_name
        .clone()
        .unwrap_or_else(crate::metrics::hostname);
    let runtime_error = |what: &'static str| {
        move |e: String| BackendError::Query {
            query: what,
            message: e,
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(2)
        .build()
        .map_err(|e| runtime_error("tokio runtime")(e.to_string()))?;
    rt.block_on(async move {
        let attest = match attest {
            None => None,
            Some((_, operator, workloads)) => {
                // Only the ring provider is compiled in; kube's client needs a default.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let kube = kube::Client::try_default()
                    .await
                    .map_err(|e| runtime_error("Kubernetes client")(e.to_string()))?;
                Some(crate::server::AttestTo {
                    kube,
                    operator,
                    workloads,
                })
            }
        };
        crate::server::serve(
            selected.backend,
            crate::server::ServeConfig {
                listen,
                interval,
                hostname,
            },
            attest,
        )
        .await
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn workload_flags_shape_the_launcher() {
        let cli = Cli::try_parse_from([
            "lotabots-agent",
            "run",
            "--operator-url",
            "https://op:8443",
            "--workload-runtime-class",
            "gvisor",
            "--max-workload-pods",
            "3",
        ])
        .unwrap();
        let Command::Run { workloads, .. } = cli.command else {
            panic!("run")
        };
        let cfg = workloads.launcher_config("https://op:8443").unwrap();
        assert_eq!(cfg.max_pods, 3);
        assert_eq!(cfg.pod.namespace, "lotabots-workloads");
        assert_eq!(cfg.pod.runtime_class.as_deref(), Some("gvisor"));
        assert_eq!(
            cfg.pod.operator_url, "https://op:8443",
            "defaults to --operator-url"
        );
        assert_eq!(cfg.pod.operator_ca_configmap, "lotabots-operator-ca");
        assert_eq!(cfg.pod.cpu_request, "1", "default");
        assert_eq!(cfg.pod.memory_limit, "16Gi", "default");
        assert!(
            Cli::try_parse_from([
                "lotabots-agent",
                "run",
                "--operator-url",
                "u",
                "--max-workload-pods",
                "0"
            ])
            .is_err()
        );
    }

    #[test]
    fn workload_resources_are_flags_and_checked() {
        let parse = |cpu: &str, memory: &str| {
            Cli::try_parse_from([
                "lotabots-agent",
                "run",
                "--operator-url",
                "u",
                "--workload-cpu",
                cpu,
                "--workload-memory",
                memory,
            ])
        };
        let Command::Run { workloads, .. } = parse("500m", "64Gi").unwrap().command else {
            panic!("run")
        };
        let cfg = workloads.launcher_config("u").unwrap();
        assert_eq!(
            (cfg.pod.cpu_request.as_str(), cfg.pod.memory_limit.as_str()),
            ("500m", "64Gi")
        );
        let err = parse("lots", "16Gi").unwrap_err().to_string();
        assert!(
            err.contains("--workload-cpu") && err.contains("CPU quantity"),
            "{err}"
        );
        let err = parse("1", "16 gigs").unwrap_err().to_string();
        assert!(err.contains("--workload-memory"), "{err}");
        assert!(parse("1", "1Ki").is_err(), "too little to run anything");
    }

    #[test]
    fn durations_are_checked() {
        assert_eq!(duration_arg("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(duration_arg("1m"), Ok(Duration::from_secs(60)));
        assert!(duration_arg("0s").is_err());
        assert!(duration_arg("soon").unwrap_err().contains("not a duration"));
    }
}
