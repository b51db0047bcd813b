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
    /// Attest a model offline: its signature (OpenSSF model-signing Sigstore bundle), the
    /// integrity of every file, and the policy of a ModelAttestation.
    ///
    /// Exit 0 when every stage that ran passed, 1 when one failed (every file it objected
    /// to is named), 2 when the input is unusable.
    AttestModel(lotabots_model::attest::AttestArgs),
    /// Print the client API's OpenAPI document (JSON).
    Openapi,
    /// Attestation tokens.
    #[command(subcommand)]
    Token(TokenCommand),
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
        /// Judge confidential-computing reports against this reference bundle (JSON: NVIDIA
        /// RIMs and OCSP responses, see operator/verifier/REFERENCE_BUNDLE.md).
        #[arg(long, env = "LOTABOTS_REFERENCE_BUNDLE")]
        reference_bundle: Option<PathBuf>,
        /// Accept the bundle's rimRootOverride instead of the pinned NVIDIA RIM root (test
        /// fleets only).
        #[arg(
            long,
            env = "LOTABOTS_ALLOW_RIM_ROOT_OVERRIDE",
            requires = "reference_bundle"
        )]
        allow_rim_root_override: bool,
        /// Output format.
        #[arg(long, value_enum, env = "LOTABOTS_FORMAT", default_value_t = Format::Table)]
        format: Format,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Verify an attestation token offline against the operator's JWKS.
    ///
    /// Exit 0 when the token is valid and its verdict is Attested, 1 when it is invalid
    /// or its verdict is not Attested (the reason printed), 2 when the input is unusable.
    Verify {
        /// The token (a compact JWS), or `-` to read it from stdin.
        #[arg(env = "LOTABOTS_TOKEN")]
        token: String,
        /// The operator's keys: its `https://…/.well-known/jwks.json`, or a file.
        #[arg(long, env = "LOTABOTS_JWKS")]
        jwks: crate::tokens::jwks::JwksSource,
        /// PEM CA bundle to trust for an https:// --jwks besides the system's roots
        /// (the operator's CA, ConfigMap lotabots-operator-ca).
        #[arg(long, env = "LOTABOTS_JWKS_CA")]
        jwks_ca: Option<PathBuf>,
        /// Require this issuer (`iss`).
        #[arg(long, env = "LOTABOTS_TOKEN_ISSUER")]
        issuer: Option<String>,
        /// Require this audience (`aud`).
        #[arg(long, env = "LOTABOTS_TOKEN_AUDIENCE")]
        audience: Option<String>,
        /// Clock skew tolerated, in seconds.
        #[arg(long, env = "LOTABOTS_TOKEN_LEEWAY_SECONDS", default_value_t = 30)]
        leeway_seconds: u64,
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
    /// lotabots-operator-ca (in its namespace and the workload pods') and inject it into
    /// the webhook configuration. Without it, --tls-cert/--tls-key are read (e.g. from
    /// cert-manager) and the ca.crt beside --tls-cert, if any, is published to the
    /// workload namespace (none: warned once; provide that ConfigMap).
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
    /// Judge the GPUs' confidential-computing reports against this reference bundle (JSON:
    /// NVIDIA RIMs and OCSP responses; e.g. a ConfigMap mounted as a file). Read at start.
    #[arg(long, env = "LOTABOTS_REFERENCE_BUNDLE")]
    reference_bundle: Option<PathBuf>,
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
    /// Where the operator pod mounts the volumes of the models it attests: a
    /// ModelAttestation's PVC source is read at MODEL_ROOT/NAMESPACE/CLAIM/PATH.
    #[arg(long, env = "LOTABOTS_MODEL_ROOT", default_value = crate::model_inputs::DEFAULT_MODEL_ROOT)]
    model_root: PathBuf,
    /// How often every model is judged again (its files, keys and ConfigMaps can change
    /// without its spec changing), in seconds.
    #[arg(long, env = "LOTABOTS_MODEL_RESYNC_SECONDS", default_value_t = 3600)]
    model_resync_seconds: u64,
    /// PEM P-256 key (PKCS#8 or SEC1) that signs the model statements sealed into the
    /// evidence store. Unset: the current attestation-token signing key (its Secret).
    #[arg(long, env = "LOTABOTS_MODEL_STATEMENT_KEY")]
    model_statement_key: Option<PathBuf>,
    /// The ServiceAccount of the isolated workload pods, `namespace/name`: only tokens of
    /// its pods, bound to the pod, may post GPU self-test results. Its namespace is the
    /// workload namespace, where the leader also publishes its CA (ConfigMap
    /// lotabots-operator-ca) for those pods to verify the evidence API.
    #[arg(
        long,
        env = "LOTABOTS_WORKLOAD_SERVICE_ACCOUNT",
        default_value = "lotabots-workloads/lotabots-workload"
    )]
    workload_service_account: String,
    /// Accept GPU self-test results of the simulated mode (tests and development only: a
    /// simulated self-test proves nothing about a GPU).
    #[arg(long, env = "LOTABOTS_ACCEPT_SIMULATED_WORKLOADS")]
    accept_simulated_workloads: bool,
    #[command(flatten)]
    client_api: crate::client_api::config::ClientApiFlags,
    #[command(flatten)]
    store: crate::evidence_store::StoreArgs,
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
        let client_api = self.client_api.settings(&self.lease_namespace)?;
        let workload_service_account =
            match crate::run::parse_agents(std::slice::from_ref(&self.workload_service_account))
                .ok()
                .as_deref()
            {
                Some([one]) => one.clone(),
                _ => anyhow::bail!(
                    "--workload-service-account {:?} must be one namespace/name",
                    self.workload_service_account
                ),
            };
        let models = crate::run::ModelConfig {
            settings: crate::model_inputs::ModelSettings {
                model_root: self.model_root,
                resync: Duration::from_secs(self.model_resync_seconds.max(1)),
            },
            statement_key: self.model_statement_key,
            token_secret: self.client_api.token_secret.clone(),
            token_rotation: crate::tokens::keys::Rotation {
                every: Duration::from_secs(self.client_api.token_key_rotation_seconds),
                overlap: Duration::from_secs(self.client_api.token_key_overlap_seconds),
            },
        };
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
                reference_bundle: self
                    .reference_bundle
                    .as_deref()
                    .map(|p| verify_cmd::load_reference_bundle(p, false))
                    .transpose()?
                    .map(|(bundle, _)| std::sync::Arc::new(bundle)),
            },
            lease: LeaseConfig {
                namespace: self.lease_namespace,
                name: self.lease_name,
                identity,
                duration: lease,
                retry: lease / 3,
            },
            client_api,
            store: crate::evidence_store::StoreArgs {
                secrets: crate::evidence_store::StoreSecrets::from_env(),
                ..self.store
            },
            models,
            workloads: crate::workload_api::WorkloadSettings {
                service_account: workload_service_account,
                accept_simulated: self.accept_simulated_workloads,
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
        Command::Openapi => {
            print!("{}", crate::client_api::openapi::pretty_json());
            ExitCode::SUCCESS
        }
        Command::Token(TokenCommand::Verify {
            token,
            jwks,
            jwks_ca,
            issuer,
            audience,
            leeway_seconds,
            format,
        }) => token_verify(
            crate::tokens::verify_cmd::TokenVerifyArgs {
                token,
                jwks,
                ca: jwks_ca,
                issuer,
                audience,
                leeway: Duration::from_secs(leeway_seconds),
            },
            format,
        ),
        Command::AttestModel(args) => lotabots_model::attest::run(&args),
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
            reference_bundle,
            allow_rim_root_override,
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
                reference_bundle,
                allow_rim_root_override,
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

/// `token verify`: 0 valid and attested, 1 invalid or not attested, 2 unusable input.
fn token_verify(mut args: crate::tokens::verify_cmd::TokenVerifyArgs, format: Format) -> ExitCode {
    let fail = |e: String| {
        eprintln!("lotabots-operator: error: {e}");
        ExitCode::from(2)
    };
    if args.token == "-" {
        let mut buf = String::new();
        if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut buf) {
            return fail(format!("reading the token from stdin: {e}"));
        }
        args.token = buf;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(e.to_string()),
    };
    match runtime.block_on(crate::tokens::verify_cmd::verify(&args)) {
        Ok(outcome) => {
            match format {
                Format::Table => print!("{}", outcome.render_table()),
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&outcome.to_json()).expect("JSON serialises")
                ),
            }
            ExitCode::from(outcome.exit_code())
        }
        Err(e) => fail(e),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run_config(args: &[&str]) -> RunConfig {
        let base = ["lotabots-operator", "run", "--identity", "replica-0"];
        let cli = Cli::try_parse_from(base.iter().chain(args)).unwrap();
        let Command::Run(flags) = cli.command else {
            panic!("not run");
        };
        flags.into_config().unwrap()
    }

    #[test]
    fn model_flags_reach_the_model_controller() {
        let defaults = run_config(&[]);
        assert_eq!(
            defaults.models.settings.model_root,
            PathBuf::from(crate::model_inputs::DEFAULT_MODEL_ROOT)
        );
        assert_eq!(defaults.models.settings.resync, Duration::from_secs(3600));
        assert_eq!(defaults.models.statement_key, None);
        assert_eq!(defaults.models.token_secret, "lotabots-token-signing");
        let set = run_config(&[
            "--model-root",
            "/mnt/models",
            "--model-resync-seconds",
            "0",
            "--model-statement-key",
            "/etc/lotabots/model-key.pem",
            "--token-secret",
            "keys",
        ]);
        assert_eq!(set.models.settings.model_root, PathBuf::from("/mnt/models"));
        assert_eq!(
            set.models.settings.resync,
            Duration::from_secs(1),
            "a zero resync would spin"
        );
        assert_eq!(
            set.models.statement_key,
            Some(PathBuf::from("/etc/lotabots/model-key.pem"))
        );
        assert_eq!(set.models.token_secret, "keys");
    }

    #[test]
    fn workload_flags_default_to_the_workload_namespace_and_refuse_simulated_results() {
        let defaults = run_config(&[]);
        assert_eq!(
            defaults.workloads,
            crate::workload_api::WorkloadSettings {
                service_account: "lotabots-workloads/lotabots-workload".into(),
                accept_simulated: false,
            }
        );
        assert_eq!(
            defaults.workloads.namespace(),
            lotabots_crds::workload::DEFAULT_NAMESPACE
        );
        let set = run_config(&[
            "--workload-service-account",
            "gpu-tests/selftest",
            "--accept-simulated-workloads",
        ]);
        assert_eq!(set.workloads.service_account, "gpu-tests/selftest");
        assert!(set.workloads.accept_simulated);
        for bad in ["selftest", "a/b,c/d", "/x"] {
            let base = ["lotabots-operator", "run", "--identity", "replica-0"];
            let args = base
                .iter()
                .copied()
                .chain(["--workload-service-account", bad]);
            let Command::Run(flags) = Cli::try_parse_from(args).unwrap().command else {
                panic!("not run");
            };
            let err = flags.into_config().unwrap_err().to_string();
            assert!(err.contains("--workload-service-account"), "{bad}: {err}");
        }
    }
}
