//! `lotabots-probe-runner`: the probe pod's command. Every setting is a flag, an
//! environment variable, or a key of the launcher's JSON parameters
//! (`LOTABOTS_WORKLOAD_PARAMS`); a flag or its own variable wins over a parameter.
//!
//! Exit codes: 0 every probe passed; 1 a probe failed, or the model was refused (its
//! files do not match the attested manifest) or could not run; 2 unusable input (flags,
//! parameters, a malformed suite); 3 the result could not be delivered to the operator.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use jiff::Timestamp;
use lotabots_crds::model_attestation::HashAlgorithm;
use lotabots_crds::workload::{WorkloadResult, env};
use lotabots_model::hashing::HashOptions;
use lotabots_model::manifest::Serialization;

use crate::integrity::{Expectation, parse_manifest_digest};
use crate::result::{Binding, Poster, workload_result};
use crate::suite::Suite;
use crate::{DeviceChoice, ProbeError, RunOptions, Timings, run_with};

/// Keys of the launcher's JSON parameters this runner reads.
pub mod params {
    /// The model directory (mounted read-only).
    pub const MODEL_DIR: &str = "modelDir";
    /// The probe suite file (the ConfigMap key, mounted).
    pub const SUITE: &str = "suite";
    /// The attested manifest digest, `sha256:HEX`.
    pub const MANIFEST_DIGEST: &str = "manifestDigest";
    /// A signed manifest (bundle or statement) naming each file's digest.
    pub const SIGNED_MANIFEST: &str = "signedManifest";
    /// `sha256` or `blake3` (the ModelAttestation's `spec.integrity.algorithm`).
    pub const HASH_ALGORITHM: &str = "hashAlgorithm";
    /// Shard size in bytes (`spec.integrity.shardSizeBytes`).
    pub const SHARD_SIZE_BYTES: &str = "shardSizeBytes";
    /// Every key, for messages.
    pub const ALL: [&str; 6] = [
        MODEL_DIR,
        SUITE,
        MANIFEST_DIGEST,
        SIGNED_MANIFEST,
        HASH_ALGORITHM,
        SHARD_SIZE_BYTES,
    ];
}

/// Hash algorithm of the attested manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Algorithm {
    /// SHA-256 (model_signing's default).
    Sha256,
    /// BLAKE3.
    Blake3,
}

/// Runs a behavioural probe suite on a model after checking its files against the
/// attested manifest, and posts the result to the operator.
#[derive(Debug, Clone, Parser)]
#[command(name = "lotabots-probe-runner", version)]
pub struct Args {
    /// The model directory. Parameter: modelDir.
    #[arg(long, env = "LOTABOTS_PROBE_MODEL", value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// The probe suite (YAML). Parameter: suite.
    #[arg(long, env = "LOTABOTS_PROBE_SUITE", value_name = "FILE")]
    pub suite: Option<PathBuf>,
    /// The attested manifest digest (sha256:HEX); the model is not loaded unless its
    /// files hash to it. Parameter: manifestDigest.
    #[arg(long, env = "LOTABOTS_MANIFEST_DIGEST", value_name = "sha256:HEX")]
    pub manifest_digest: Option<String>,
    /// A signed manifest (Sigstore bundle or in-toto statement) of the attested digest,
    /// to name which file differs. Default: model.sig inside the model, when present.
    /// Parameter: signedManifest.
    #[arg(long, env = "LOTABOTS_SIGNED_MANIFEST", value_name = "FILE")]
    pub signed_manifest: Option<PathBuf>,
    /// Hash algorithm of the manifest when no signed manifest says. Default sha256.
    /// Parameter: hashAlgorithm.
    #[arg(long, env = "LOTABOTS_HASH_ALGORITHM", value_enum)]
    pub hash_algorithm: Option<Algorithm>,
    /// Shard size of a sharded SHA-256 manifest. Parameter: shardSizeBytes.
    #[arg(long, env = "LOTABOTS_SHARD_SIZE_BYTES", value_name = "BYTES")]
    pub shard_size_bytes: Option<u64>,
    /// Where the model runs.
    #[arg(long, env = "LOTABOTS_PROBE_DEVICE", value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Hashing threads (default: one per core).
    #[arg(long, env = "LOTABOTS_HASH_THREADS")]
    pub threads: Option<usize>,
    /// Do not post the result; print it (to stdout, or to --output).
    #[arg(long)]
    pub no_post: bool,
    /// Also write the result (JSON) to this file.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Print timings to stderr: verification, model load, probes per second.
    #[arg(long)]
    pub report: bool,
    /// The operator's base URL (https://…).
    #[arg(long, env = env::OPERATOR_URL, value_name = "URL")]
    pub operator_url: Option<String>,
    /// The pod-bound token posted with the result.
    #[arg(long, env = env::TOKEN_FILE, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// CA bundle that verifies the operator's certificate.
    #[arg(long, env = env::CA_FILE, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// The launcher's JSON parameters.
    #[arg(long, env = env::PARAMS, value_name = "JSON", hide_env_values = false)]
    pub params: Option<String>,
    /// The workload request id the result echoes.
    #[arg(long, env = env::REQUEST_ID)]
    pub request_id: Option<String>,
    /// Hex nonce of the node attestation the result is bound to.
    #[arg(long, env = env::NONCE)]
    pub nonce: Option<String>,
    /// The node the pod was launched for.
    #[arg(long, env = env::NODE)]
    pub node: Option<String>,
}

/// Everything a run needs, resolved from flags, variables and parameters.
#[derive(Debug)]
pub struct Settings {
    /// The model directory.
    pub model: PathBuf,
    /// The suite file.
    pub suite: PathBuf,
    /// How to run.
    pub run: RunOptions,
    /// Where to post; `None` with `--no-post`.
    pub post: Option<PostSettings>,
    /// The binding echoed in the result.
    pub binding: Binding,
}

/// Where and how to post.
#[derive(Debug)]
pub struct PostSettings {
    /// Base URL.
    pub operator_url: String,
    /// Token file.
    pub token_file: PathBuf,
    /// CA bundle.
    pub ca_file: PathBuf,
}

fn usage(m: impl Into<String>) -> ProbeError {
    ProbeError::Usage(m.into())
}

impl Args {
    /// Resolves the settings; the error names the missing or malformed setting.
    pub fn settings(&self) -> Result<Settings, ProbeError> {
        let params: BTreeMap<String, String> = match self.params.as_deref() {
            None | Some("") => BTreeMap::new(),
            Some(json) => serde_json::from_str(json).map_err(|e| {
                usage(format!(
                    "{}: not a JSON object of strings: {e}",
                    env::PARAMS
                ))
            })?,
        };
        if let Some(k) = params.keys().find(|k| !params::ALL.contains(&k.as_str())) {
            return Err(usage(format!(
                "{}: unknown parameter {k:?} (known: {})",
                env::PARAMS,
                params::ALL.join(", ")
            )));
        }
        let param = |k: &str| params.get(k).cloned();
        let need = |v: Option<String>, flag: &str, key: &str| {
            v.ok_or_else(|| {
                usage(format!(
                    "{flag} is required (or the parameter {key} in {})",
                    env::PARAMS
                ))
            })
        };
        let path_of = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let model = need(
            path_of(&self.model).or_else(|| param(params::MODEL_DIR)),
            "--model",
            params::MODEL_DIR,
        )?;
        let suite = need(
            path_of(&self.suite).or_else(|| param(params::SUITE)),
            "--suite",
            params::SUITE,
        )?;
        let digest = need(
            self.manifest_digest
                .clone()
                .or_else(|| param(params::MANIFEST_DIGEST)),
            "--manifest-digest",
            params::MANIFEST_DIGEST,
        )?;
        let manifest_digest =
            parse_manifest_digest(&digest).map_err(|e| usage(format!("--manifest-digest: {e}")))?;
        let algorithm = match (self.hash_algorithm, param(params::HASH_ALGORITHM)) {
            (Some(Algorithm::Sha256), _) => HashAlgorithm::Sha256,
            (Some(Algorithm::Blake3), _) => HashAlgorithm::Blake3,
            (None, None) => HashAlgorithm::Sha256,
            (None, Some(a)) => match a.as_str() {
                "sha256" => HashAlgorithm::Sha256,
                "blake3" => HashAlgorithm::Blake3,
                other => {
                    return Err(usage(format!(
                        "parameter {}: {other:?} is neither sha256 nor blake3",
                        params::HASH_ALGORITHM
                    )));
                }
            },
        };
        let shard_size = match (self.shard_size_bytes, param(params::SHARD_SIZE_BYTES)) {
            (Some(s), _) => Some(s),
            (None, Some(s)) => Some(s.parse::<u64>().map_err(|e| {
                usage(format!(
                    "parameter {}: {s:?} is not a byte count: {e}",
                    params::SHARD_SIZE_BYTES
                ))
            })?),
            (None, None) => None,
        };
        let serialization = match (algorithm, shard_size) {
            (_, Some(0)) => return Err(usage("--shard-size-bytes must be greater than 0")),
            // As the operator: BLAKE3 is never sharded (model_signing's rule).
            (HashAlgorithm::Sha256, Some(size)) => Serialization::shards(algorithm, size),
            (algorithm, _) => Serialization::files(algorithm),
        };
        let signed_manifest = self
            .signed_manifest
            .clone()
            .or_else(|| param(params::SIGNED_MANIFEST).map(PathBuf::from));
        let post = if self.no_post {
            None
        } else {
            let missing = |flag: &str, var: &str| {
                usage(format!(
                    "{flag} (or {var}) is required to post the result; --no-post prints it instead"
                ))
            };
            Some(PostSettings {
                operator_url: self
                    .operator_url
                    .clone()
                    .ok_or_else(|| missing("--operator-url", env::OPERATOR_URL))?,
                token_file: self
                    .token_file
                    .clone()
                    .ok_or_else(|| missing("--token-file", env::TOKEN_FILE))?,
                ca_file: self
                    .ca_file
                    .clone()
                    .ok_or_else(|| missing("--ca-file", env::CA_FILE))?,
            })
        };
        let binding = Binding {
            request_id: self.request_id.clone().unwrap_or_default(),
            nonce: self.nonce.clone().unwrap_or_default(),
            node: self.node.clone().unwrap_or_default(),
        };
        if post.is_some() {
            for (value, var) in [
                (&binding.request_id, env::REQUEST_ID),
                (&binding.nonce, env::NONCE),
                (&binding.node, env::NODE),
            ] {
                if value.is_empty() {
                    return Err(usage(format!(
                        "{var} is required to post the result (the launcher sets it)"
                    )));
                }
            }
        }
        Ok(Settings {
            model: PathBuf::from(model),
            suite: PathBuf::from(suite),
            run: RunOptions {
                expectation: Expectation {
                    manifest_digest,
                    serialization,
                    signed_manifest,
                },
                device: self.device,
                hash: HashOptions {
                    threads: self.threads,
                    ..HashOptions::default()
                },
            },
            post,
            binding,
        })
    }
}

/// Reads and parses the suite file.
fn read_suite(path: &Path) -> Result<Suite, ProbeError> {
    let bytes = std::fs::read(path).map_err(|e| usage(format!("{}: {e}", path.display())))?;
    Suite::parse(&bytes).map_err(|e| usage(format!("{}: {e}", path.display())))
}

/// The `--report` figures.
pub fn render_timings(t: &Timings, probes: usize) -> String {
    let secs = t.probes.as_secs_f64().max(1e-9);
    format!(
        "verify (hash + compare): {:.3} s\nmodel load ({:.1} MB read, re-checked, built): {:.3} s\nprobes: {probes} ({} distinct texts) in {:.3} s = {:.1} probes/s, {:.1} texts/s",
        t.verify.as_secs_f64(),
        t.model_bytes as f64 / 1e6,
        t.load.as_secs_f64(),
        t.texts,
        t.probes.as_secs_f64(),
        probes as f64 / secs,
        t.texts as f64 / secs,
    )
}

/// Runs the command; the exit code as documented above.
pub fn main_with(args: &Args) -> ExitCode {
    let say = |m: &str| eprintln!("lotabots-probe-runner: {m}");
    let settings = match args.settings() {
        Ok(s) => s,
        Err(e) => {
            say(&format!("error: {e}"));
            return ExitCode::from(e.exit_code());
        }
    };
    let poster = match &settings.post {
        None => None,
        Some(p) => {
            let ca = match std::fs::read(&p.ca_file) {
                Ok(ca) => ca,
                Err(e) => {
                    say(&format!("error: CA file {}: {e}", p.ca_file.display()));
                    return ExitCode::from(2);
                }
            };
            match Poster::new(&p.operator_url, &ca, p.token_file.clone()) {
                Ok(poster) => Some(poster),
                Err(e) => {
                    say(&format!("error: {e}"));
                    return ExitCode::from(2);
                }
            }
        }
    };

    let started = Timestamp::now();
    let outcome = read_suite(&settings.suite).and_then(|suite| {
        let out = run_with(&settings.model, &suite, &settings.run)?;
        Ok((out, suite.probes.len()))
    });
    let finished = Timestamp::now();
    let mut code = 0u8;
    let result: WorkloadResult = match outcome {
        Ok((out, n)) => {
            if args.report {
                say(&render_timings(&out.timings, n));
            }
            for p in out.report.probes.iter().filter(|p| !p.passed) {
                say(&format!("probe {:?} failed: {}", p.name, p.detail));
            }
            let r = workload_result(&settings.binding, started, finished, Ok(out.report));
            if !r.passed {
                code = 1;
            }
            r
        }
        Err(e) => {
            say(&format!("error: {e}"));
            code = e.exit_code();
            workload_result(&settings.binding, started, finished, Err(e.to_string()))
        }
    };

    let json = serde_json::to_string_pretty(&result).expect("a result serialises");
    if let Some(path) = &args.output
        && let Err(e) = std::fs::write(path, format!("{json}\n"))
    {
        say(&format!("error: writing {}: {e}", path.display()));
        return ExitCode::from(3);
    }
    match poster {
        None if args.output.is_none() => println!("{json}"),
        None => {}
        Some(poster) => {
            let posted = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
                .and_then(|rt| rt.block_on(poster.post(&result)).map_err(|e| e.to_string()));
            match posted {
                Ok(()) => say(&format!("result posted to {}", poster.url())),
                Err(e) => {
                    say(&format!("error: {e}"));
                    return ExitCode::from(3);
                }
            }
        }
    }
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn parse(args: &[&str]) -> Args {
        let mut all = vec!["lotabots-probe-runner"];
        all.extend_from_slice(args);
        Args::try_parse_from(all).unwrap()
    }

    const DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn arguments_are_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn flags_win_over_parameters() {
        let mut a = parse(&["--no-post", "--model", "/flag"]);
        a.params = Some(format!(
            r#"{{"modelDir":"/param","suite":"/s.yaml","manifestDigest":"{DIGEST}","hashAlgorithm":"sha256","shardSizeBytes":"4096"}}"#
        ));
        let s = a.settings().unwrap();
        assert_eq!(s.model, PathBuf::from("/flag"));
        assert_eq!(s.suite, PathBuf::from("/s.yaml"));
        assert_eq!(s.run.expectation.manifest_digest, DIGEST);
        assert_eq!(
            s.run.expectation.serialization,
            Serialization::shards(HashAlgorithm::Sha256, 4096)
        );
        assert!(s.post.is_none());
    }

    #[test]
    fn missing_and_malformed_settings_are_named() {
        let e = parse(&["--no-post", "--suite", "s"])
            .settings()
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("--model is required (or the parameter modelDir"),
            "{e}"
        );
        let e = parse(&[
            "--no-post",
            "--model",
            "m",
            "--suite",
            "s",
            "--manifest-digest",
            "sha256:12",
        ])
        .settings()
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("--manifest-digest: manifest digest \"sha256:12\""),
            "{e}"
        );
        let mut a = parse(&["--no-post"]);
        a.params = Some(r#"{"modelDir":"m","sute":"s"}"#.into());
        let e = a.settings().unwrap_err();
        assert!(e.to_string().contains("unknown parameter \"sute\""), "{e}");
        a.params = Some(r#"{"modelDir": 1}"#.into());
        assert!(
            a.settings()
                .unwrap_err()
                .to_string()
                .contains("not a JSON object of strings")
        );
        let mut a = parse(&[
            "--no-post",
            "--model",
            "m",
            "--suite",
            "s",
            "--manifest-digest",
            DIGEST,
        ]);
        a.params = Some(r#"{"hashAlgorithm":"md5"}"#.into());
        let e = a.settings().unwrap_err();
        assert!(
            e.to_string()
                .contains("\"md5\" is neither sha256 nor blake3"),
            "{e}"
        );
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn posting_needs_the_operator_and_the_binding() {
        let base = ["--model", "m", "--suite", "s", "--manifest-digest", DIGEST];
        let e = parse(&base).settings().unwrap_err();
        assert!(
            e.to_string()
                .contains("--operator-url (or LOTABOTS_OPERATOR_URL)"),
            "{e}"
        );
        let mut a = parse(&base);
        a.operator_url = Some("https://op".into());
        a.token_file = Some("/t".into());
        a.ca_file = Some("/ca".into());
        let e = a.settings().unwrap_err();
        assert!(
            e.to_string().contains("LOTABOTS_WORKLOAD_ID is required"),
            "{e}"
        );
        a.request_id = Some("r".into());
        a.nonce = Some("ab".into());
        a.node = Some("n".into());
        let s = a.settings().unwrap();
        assert_eq!(s.binding.node, "n");
        assert_eq!(s.post.unwrap().operator_url, "https://op");
    }
}
