//! The command line: every flag is also an environment variable.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use jiff::Timestamp;

use std::net::SocketAddr;

use crate::controller::Settings;
use crate::leader::LeaseConfig;
use crate::run::RunConfig;
use crate::verify_cmd::{self, VerifyArgs};

/// lotabots operator.
#[derive(Debug, Parser)]
#[command(name = "lotabots-operator", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the operator: the evidence API (HTTPS) and the GpuAttestation controller, as
    /// the elected leader of its replicas.
    Run(Box<RunFlags>),
    /// Print the CustomResourceDefinitions as YAML (for `kubectl apply -f -`).
    Crd,
    /// Judge one agent evidence document against a GpuAttestation's policy, offline.
    ///
    /// Exit 0 when attested, 1 when failed or unknown (every reason printed), 2 when the
    /// input is unusable.
    VerifyGpuEvidence {
        /// The agent's evidence document (JSON, as `lotabots-agent probe` prints it).
        #[arg(long, env = "LOTABOTS_EVIDENCE")]
        evidence: Option<PathBuf>,
        /// An SPDM measurement exchange (GET_MEASUREMENTS request and response; hex text
        /// or binary) from a GPU in confidential-computing mode.
        #[arg(long, env = "LOTABOTS_REPORT", requires = "chain")]
        report: Option<PathBuf>,
        /// The device certificate chain of --report (PEM, leaf first).
        #[arg(long, env = "LOTABOTS_CHAIN", requires = "report")]
        chain: Option<PathBuf>,
        /// Use this device root (PEM) instead of the NVIDIA device identity root compiled
        /// into the binary.
        #[arg(long, env = "LOTABOTS_DEVICE_ROOT")]
        device_root: Option<PathBuf>,
        /// The nonce the verifier issued (64 hex characters).
        #[arg(long, env = "LOTABOTS_NONCE")]
        nonce: String,
        /// A GpuAttestation (YAML) whose policy applies; without it only the nonce,
        /// freshness and backend are checked.
        #[arg(long, env = "LOTABOTS_POLICY")]
        policy: Option<PathBuf>,
        /// Judge at this time (RFC 3339) instead of now, e.g. for archived evidence.
        #[arg(long, env = "LOTABOTS_AT")]
        at: Option<Timestamp>,
        /// Oldest evidence accepted, in seconds.
        #[arg(long, env = "LOTABOTS_MAX_AGE_SECONDS", default_value_t = 300)]
        max_age_seconds: u64,
        /// Accept evidence from the agent's simulated backend (development only: it
        /// proves nothing about hardware).
        #[arg(long, env = "LOTABOTS_ALLOW_SIMULATED")]
        allow_simulated: bool,
        /// Output format.
        #[arg(long, value_enum, env = "LOTABOTS_FORMAT", default_value_t = Format::Table)]
        format: Format,
    },
}

#[derive(Debug, clap::Args)]
struct RunFlags {
    /// Evidence API address (HTTPS).
    #[arg(long, env = "LOTABOTS_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Issue and rotate the serving certificates of the evidence API and the webhook with
    /// the operator's own CA (Secret lotabots-ca), publish the CA in the ConfigMap
    /// lotabots-operator-ca and inject it into the webhook configuration. Without it,
    /// --tls-cert/--tls-key are read (e.g. from cert-manager).
    #[arg(long, env = "LOTABOTS_MANAGE_CERTIFICATES")]
    manage_certificates: bool,
    /// PEM certificate (chain) of the evidence API.
    #[arg(
        long,
        env = "LOTABOTS_TLS_CERT",
        default_value = "/etc/lotabots/tls/tls.crt"
    )]
    tls_cert: PathBuf,
    /// PEM private key of the evidence API.
    #[arg(
        long,
        env = "LOTABOTS_TLS_KEY",
        default_value = "/etc/lotabots/tls/tls.key"
    )]
    tls_key: PathBuf,
    /// Probes (/healthz, /readyz) and /metrics address.
    #[arg(long, env = "LOTABOTS_PROBE_ADDR", default_value = "0.0.0.0:8080")]
    probe_addr: SocketAddr,
    /// Agent ServiceAccounts allowed to submit evidence, `namespace/name`, comma-separated.
    #[arg(
        long,
        env = "LOTABOTS_AGENT_SERVICE_ACCOUNTS",
        default_value = "lotabots-system/lotabots-agent"
    )]
    agent_service_accounts: Vec<String>,
    /// How long a challenge nonce stays valid, in seconds.
    #[arg(long, env = "LOTABOTS_NONCE_TTL_SECONDS", default_value_t = 120)]
    nonce_ttl_seconds: u64,
    /// How long past its re-attestation interval an agent may stay silent before its
    /// node turns Unknown, in seconds.
    #[arg(long, env = "LOTABOTS_GRACE_SECONDS", default_value_t = 120)]
    grace_seconds: u64,
    /// Longest time between two reconciles of one GpuAttestation, in seconds.
    #[arg(long, env = "LOTABOTS_RESYNC_SECONDS", default_value_t = 60)]
    resync_seconds: u64,
    /// Evidence arriving within this window is judged in one reconcile, in milliseconds.
    #[arg(long, env = "LOTABOTS_DEBOUNCE_MILLIS", default_value_t = 1000)]
    debounce_millis: u64,
    /// Attest evidence of the agent's simulated backend (development clusters only: it
    /// proves nothing about hardware).
    #[arg(long, env = "LOTABOTS_ALLOW_SIMULATED")]
    allow_simulated: bool,
    /// Namespace of the leader-election Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "lotabots-system")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, env = "LOTABOTS_LEASE_NAME", default_value = "lotabots-operator")]
    lease_name: String,
    /// This replica's identity in the Lease (its pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long the Lease holds without renewal, in seconds.
    #[arg(long, env = "LOTABOTS_LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,
}

impl RunFlags {
    fn into_config(self) -> anyhow::Result<RunConfig> {
        let identity = self
            .identity
            .or_else(|| std::env::var("HOSTNAME").ok())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                anyhow::anyhow!("--identity (POD_NAME) is required when HOSTNAME is unset")
            })?;
        let lease = Duration::from_secs(self.lease_seconds.max(3));
        Ok(RunConfig {
            listen: self.listen,
            manage_certificates: self.manage_certificates,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            probe_addr: self.probe_addr,
            agents: crate::run::parse_agents(&self.agent_service_accounts)?,
            nonce_ttl: Duration::from_secs(self.nonce_ttl_seconds),
            settings: Settings {
                grace: Duration::from_secs(self.grace_seconds),
                allow_simulated: self.allow_simulated,
                resync: Duration::from_secs(self.resync_seconds.max(1)),
                debounce: Duration::from_millis(self.debounce_millis),
            },
            lease: LeaseConfig {
                namespace: self.lease_namespace,
                name: self.lease_name,
                identity,
                duration: lease,
                retry: lease / 3,
            },
        })
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

/// Parses the command line and runs it; the exit code follows each command's contract.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(flags) => {
            init_tracing();
            let outcome = flags.into_config().and_then(|cfg| {
                tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?
                    .block_on(crate::run::run(cfg))
            });
            match outcome {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Crd => {
            for (_, yaml) in lotabots_crds::crdgen::rendered_files() {
                print!("---\n{yaml}");
            }
            ExitCode::SUCCESS
        }
        Command::VerifyGpuEvidence {
            evidence,
            report,
            chain,
            device_root,
            nonce,
            policy,
            at,
            max_age_seconds,
            allow_simulated,
            format,
        } => {
            let args = VerifyArgs {
                evidence,
                report,
                chain,
                device_root,
                nonce,
                policy,
                at,
                max_age: Duration::from_secs(max_age_seconds),
                allow_simulated,
            };
            match verify_cmd::verify(&args) {
                Ok(doc) => {
                    match format {
                        Format::Table => print!("{}", doc.render_table()),
                        Format::Json => println!(
                            "{}",
                            serde_json::to_string_pretty(&doc).expect("verdict serialises")
                        ),
                    }
                    ExitCode::from(doc.exit_code())
                }
                Err(e) => {
                    eprintln!("lotabots-operator: error: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// Logs to stderr; `LOTABOTS_LOG` filters (default `info`), `LOTABOTS_LOG_FORMAT=json`
/// for log collectors.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOTABOTS_LOG")
        .unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("LOTABOTS_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
