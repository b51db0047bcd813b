//! Command line: flags (each launcher input also an environment variable), the run, the
//! output and the exit code.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use jiff::Timestamp;
use lotabots_crds::workload::env;

use crate::config::{self, ConfigError, Delivery, Raw};
use crate::post::{Poster, Retry};
use crate::report::{self, EXIT_NOT_DELIVERED, EXIT_USAGE_OR_NO_GPU};
use crate::simulated::{self, Fault};
use crate::{RunError, gpu, table};

/// How the result is shown on standard output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The WorkloadResult as JSON (what is posted).
    Json,
    /// A table for people, with published figures of known cards.
    Table,
}

/// The lotabots GPU self-test: matrix multiply against a CPU reference, memory pattern test
/// and device-to-device bandwidth on every visible GPU, through the CUDA driver API; the
/// result is bound to the node attestation's nonce and posted to the operator.
///
/// Exit codes: 0 every check passed; 1 a check failed; 2 bad usage or no GPU; 3 the result
/// could not be delivered to the operator.
#[derive(Debug, Parser)]
#[command(name = "lotabots-gpu-selftest", version)]
pub struct Args {
    /// Run the checks on the CPU instead (tests only: the report says `simulated: true`).
    #[arg(long)]
    pub simulated: bool,
    /// Inject a fault into the simulated run so the result fails.
    #[arg(long, value_enum, requires = "simulated")]
    pub simulate_fault: Option<Fault>,
    /// Simulated devices to report.
    #[arg(long, default_value_t = 1, requires = "simulated",
          value_parser = clap::value_parser!(u32).range(1..=16))]
    pub simulated_devices: u32,

    /// Side of the square matrices (default 1024, or `matmulN` of the parameters).
    #[arg(long)]
    pub matmul_n: Option<u32>,
    /// Timed repetitions of the product.
    #[arg(long, default_value_t = 10)]
    pub matmul_runs: u32,
    /// Share of free device memory the pattern test covers, in (0, 0.9] (default 0.25, or
    /// `memoryShare` of the parameters).
    #[arg(long)]
    pub memory_share: Option<f64>,
    /// Size of each bandwidth buffer in MiB (capped at an eighth of free memory).
    #[arg(long, default_value_t = 1024)]
    pub bandwidth_mib: u64,
    /// Timed copies of the bandwidth check.
    #[arg(long, default_value_t = 20)]
    pub bandwidth_runs: u32,

    /// Hex nonce of the node attestation the result is bound to (64 hex characters).
    #[arg(long, env = env::NONCE)]
    pub nonce: Option<String>,
    /// The node the pod was launched for.
    #[arg(long, env = env::NODE)]
    pub node: Option<String>,
    /// The workload request's id.
    #[arg(long, env = env::REQUEST_ID)]
    pub request_id: Option<String>,
    /// Base URL of the operator's API (`https://…`).
    #[arg(long, env = env::OPERATOR_URL)]
    pub operator_url: Option<String>,
    /// The projected, pod-bound ServiceAccount token.
    #[arg(long, env = env::TOKEN_FILE)]
    pub token_file: Option<PathBuf>,
    /// CA bundle (PEM) verifying the operator's certificate.
    #[arg(long, env = env::CA_FILE)]
    pub ca_file: Option<PathBuf>,
    /// Workload parameters, a JSON object (`{"memoryShare":"0.25"}`).
    #[arg(long, env = env::PARAMS)]
    pub params: Option<String>,

    /// Do not post: only print the result (for running by hand).
    #[arg(long)]
    pub no_post: bool,
    /// Also write the result JSON to this file.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// How to print the result on standard output.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// Attempts at posting the result (transport errors and 5xx are retried with backoff).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub post_attempts: u32,
    /// Wait before the second attempt in milliseconds; doubled for each further one.
    #[arg(long, default_value_t = 500)]
    pub post_backoff_ms: u64,
}

impl Args {
    fn raw(&self) -> Raw {
        Raw {
            nonce: self.nonce.clone(),
            node: self.node.clone(),
            request_id: self.request_id.clone(),
            operator_url: self.operator_url.clone(),
            token_file: self.token_file.clone(),
            ca_file: self.ca_file.clone(),
            params: self.params.clone(),
            matmul_n: self.matmul_n,
            memory_share: self.memory_share,
            matmul_runs: self.matmul_runs,
            bandwidth_mib: self.bandwidth_mib,
            bandwidth_runs: self.bandwidth_runs,
            no_post: self.no_post,
        }
    }
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    ExitCode::from(run(&Args::parse()))
}

/// Runs the self-test as `args` say; returns the exit code.
pub fn run(args: &Args) -> u8 {
    let resolved = match config::resolve(&args.raw(), || {
        tracing::warn!("no nonce given: drawing one (the result is bound to nothing)");
        rand::random()
    }) {
        Ok(r) => r,
        Err(ConfigError(e)) => {
            eprintln!("error: {e}");
            return EXIT_USAGE_OR_NO_GPU;
        }
    };
    // Build the client before running: a bad CA bundle or URL should stop the pod before
    // it spends minutes on checks whose result could not be delivered.
    let poster = match &resolved.delivery {
        Delivery::PrintOnly => None,
        Delivery::Post {
            operator_url,
            token_file,
            ca_file,
        } => {
            let poster = std::fs::read(ca_file)
                .map_err(|e| format!("{} {}: {e}", env::CA_FILE, ca_file.display()))
                .and_then(|ca| {
                    Poster::new(
                        operator_url,
                        &ca,
                        token_file.clone(),
                        Retry {
                            attempts: args.post_attempts,
                            first_backoff: std::time::Duration::from_millis(args.post_backoff_ms),
                            ..Retry::default()
                        },
                    )
                    .map_err(|e| e.to_string())
                });
            match poster {
                Ok(p) => Some(p),
                Err(e) => {
                    eprintln!("error: {e}");
                    return EXIT_USAGE_OR_NO_GPU;
                }
            }
        }
    };

    let started_at = Timestamp::now();
    let outcome = if args.simulated {
        Ok(simulated::run(
            &resolved.settings,
            &resolved.identity.node,
            args.simulated_devices,
            args.simulate_fault,
        ))
    } else {
        gpu::run(&resolved.settings)
    };
    let finished_at = Timestamp::now();
    let no_gpu = matches!(outcome, Err(RunError::NoGpu(_)));
    if let Err(e) = &outcome {
        eprintln!("error: {e}");
    }
    let result = report::build(&resolved.identity, started_at, finished_at, outcome);
    let mut code = report::exit_code(&result, no_gpu);

    let json = serde_json::to_string_pretty(&result).expect("a WorkloadResult serialises");
    let shown = match args.format {
        Format::Json => format!("{json}\n"),
        Format::Table => table::render(&result),
    };
    // A closed stdout (`| head`) must not stop the result from being written and posted.
    if let Err(e) = std::io::stdout().lock().write_all(shown.as_bytes())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: printing the result: {e}");
    }
    if let Some(path) = &args.output
        && let Err(e) = std::fs::write(path, format!("{json}\n"))
    {
        eprintln!("error: writing the result to {}: {e}", path.display());
        code = code.max(report::EXIT_FAIL);
    }

    if let Some(poster) = poster {
        let delivered = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting the HTTP runtime: {e}"))
            .and_then(|rt| rt.block_on(poster.post(&result)).map_err(|e| e.to_string()));
        match delivered {
            Ok(_) => tracing::info!(
                url = poster.url(),
                passed = result.passed,
                "result delivered"
            ),
            Err(e) => {
                eprintln!("error: {e}");
                // Whatever the checks said, the operator did not hear it.
                code = EXIT_NOT_DELIVERED;
            }
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn faults_need_the_simulated_mode() {
        let e = Args::try_parse_from(["x", "--simulate-fault", "memory"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let a = Args::try_parse_from(["x", "--simulated", "--simulate-fault", "matmul"]).unwrap();
        assert_eq!(a.simulate_fault, Some(Fault::Matmul));
    }
}
