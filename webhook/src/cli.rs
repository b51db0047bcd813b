//! Command line: `serve` (the admission server) and `check` (the offline verdict).
//! Every flag is also an environment variable, for the Deployment's `env`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::reload::{PolicyStore, load_policy_file, watch_policy};
use crate::server::{AppState, DEFAULT_MAX_BODY_BYTES, admission_router, ops_router, serve_tls};
use crate::tls::TlsStore;

/// The default policy, shipped in `config/webhook/policy.yaml`; used when no `--policy`
/// is given.
pub const DEFAULT_POLICY: &str = include_str!("../../config/webhook/policy.yaml");

/// lotabots admission webhook.
#[derive(Debug, Parser)]
#[command(name = "lotabots-webhook", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve AdmissionReview v1 over HTTPS, with health and metrics on a second port.
    Serve(ServeArgs),
    /// Evaluate AdmissionReview JSON files and manifests offline; exit 1 if any is denied.
    Check(CheckArgs),
}

/// `serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the HTTPS admission endpoint.
    #[arg(long, env = "LOTABOTS_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Address of /healthz, /readyz and /metrics (plain HTTP).
    #[arg(
        long,
        env = "LOTABOTS_WEBHOOK_OPS_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub ops_listen: SocketAddr,
    /// PEM certificate chain; reloaded when it changes.
    #[arg(long, env = "LOTABOTS_WEBHOOK_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM private key; reloaded when it changes. Its content is never logged.
    #[arg(long, env = "LOTABOTS_WEBHOOK_TLS_KEY")]
    pub tls_key: PathBuf,
    /// Policy file (YAML); reloaded when it changes, the last good one kept when a new one
    /// is invalid. Default: the built-in default policy.
    #[arg(long, env = "LOTABOTS_WEBHOOK_POLICY")]
    pub policy: Option<PathBuf>,
    /// Seconds between checks of the policy and certificate files for changes.
    #[arg(long, env = "LOTABOTS_WEBHOOK_RELOAD_INTERVAL", default_value_t = 5)]
    pub reload_interval: u64,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "LOTABOTS_WEBHOOK_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "LOTABOTS_WEBHOOK_LOG_JSON")]
    pub log_json: bool,
}

/// `check` flags.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Policy file (YAML). Default: the built-in default policy.
    #[arg(long, env = "LOTABOTS_WEBHOOK_POLICY")]
    pub policy: Option<PathBuf>,
    /// AdmissionReview JSON files and manifests (YAML with several documents, or JSON).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// Parses the command line and runs; the whole of `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check(a) => check(a),
        Command::Serve(a) => {
            init_logging(a.log_json);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("lotabots-webhook: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(serve(a)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "lotabots-webhook stopped");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

fn load_policy(path: Option<&PathBuf>) -> anyhow::Result<(Policy, Option<Vec<u8>>)> {
    match path {
        Some(p) => load_policy_file(p).map(|(pol, bytes)| (pol, Some(bytes))),
        None => Policy::from_yaml(DEFAULT_POLICY)
            .map(|p| (p, None))
            .map_err(|e| anyhow::anyhow!("built-in policy is invalid: {e}")),
    }
}

fn check(a: CheckArgs) -> ExitCode {
    let policy = match load_policy(a.policy.as_ref()) {
        Ok((p, _)) => p,
        Err(e) => {
            eprintln!("lotabots-webhook check: {e:#}");
            return ExitCode::from(2);
        }
    };
    let mut stdout = std::io::stdout().lock();
    match crate::check::run(&policy, &a.paths, &mut stdout) {
        Ok(s) if s.denied > 0 => ExitCode::from(1),
        // A file that cannot be read is not a pass: a pipeline must notice.
        Ok(s) if s.errors > 0 => ExitCode::from(2),
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lotabots-webhook check: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs the server until SIGTERM or Ctrl-C, or until a task fails.
pub async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let (policy, policy_bytes) = load_policy(a.policy.as_ref())?;
    let store = Arc::new(PolicyStore::new(policy));
    metrics.policy_current.set(1);
    let (tls_config, tls_bytes) = crate::tls::load_files(&a.tls_cert, &a.tls_key)?;
    let tls = Arc::new(TlsStore::new(tls_config));
    let ready = Arc::new(AtomicBool::new(false));
    let state = Arc::new(AppState {
        policy: store.clone(),
        metrics: metrics.clone(),
        max_body_bytes: a.max_body_bytes,
        ready: ready.clone(),
    });
    let interval = Duration::from_secs(a.reload_interval.max(1));

    let admission = TcpListener::bind(a.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", a.listen))?;
    let ops = TcpListener::bind(a.ops_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", a.ops_listen))?;
    // The bound addresses, not the flags: with port 0 (tests) only these say where to connect.
    let admission_addr = admission.local_addr()?;
    let ops_addr = ops.local_addr()?;
    tracing::info!(admission = %admission_addr, ops = %ops_addr, policy = ?a.policy, "lotabots-webhook serving");
    ready.store(true, Ordering::Relaxed);

    // Every long-running task is joined here: if one ends, the process ends and Kubernetes
    // restarts it, rather than staying "ready" with a dead part.
    let policy_watch = async {
        match (a.policy.clone(), policy_bytes) {
            (Some(p), Some(b)) => {
                watch_policy(p, interval, b, store.clone(), metrics.clone()).await
            }
            _ => std::future::pending().await,
        }
    };
    let tls_watch = crate::tls::watch(
        a.tls_cert.clone(),
        a.tls_key.clone(),
        interval,
        tls_bytes,
        tls.clone(),
        metrics.clone(),
    );
    tokio::select! {
        r = serve_tls(admission, tls, admission_router(state.clone())) => {
            r.map_err(|e| anyhow::anyhow!("admission listener failed: {e}"))
        }
        r = axum::serve(ops, ops_router(state)) => {
            r.map_err(|e| anyhow::anyhow!("ops listener failed: {e}"))
        }
        () = policy_watch => Err(anyhow::anyhow!("policy watcher stopped")),
        () = tls_watch => Err(anyhow::anyhow!("certificate watcher stopped")),
        () = shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn default_policy_is_valid() {
        Policy::from_yaml(DEFAULT_POLICY).unwrap();
    }
}
