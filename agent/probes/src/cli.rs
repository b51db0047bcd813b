//! `lotabots-probe-runner`: the probe pod's command. Every setting is a flag, an
//! environment variable, or a key of the launcher's JSON parameters
//! (`LOTABOTS_WORKLOAD_PARAMS`); a flag or its own variable wins over a parameter.
//!
//! In fetch mode (`--fetch operator`, the probe pod's: it has no model volume) the suite
//! and the model's files are fetched from the operator first ([`crate::fetch`]), into the
//! suite file and model directory named.
//!
//! Exit codes: 0 every probe passed; 1 a probe failed, or the model or suite was refused
//! (its files do not match the attested manifest, the suite another digest) or could not
//! be fetched or run; 2 unusable input (flags, parameters, a malformed suite); 3 the
//! result could not be delivered to the operator.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use jiff::Timestamp;
use lotabots_crds::model_attestation::HashAlgorithm;
use lotabots_crds::workload::{WorkloadResult, env};
use lotabots_model::hashing::HashOptions;
use lotabots_model::manifest::Serialization;
use lotabots_operator_client::{Client, Retry};

use crate::fetch::{FetchPlan, Fetched};
use crate::integrity::{Expectation, parse_manifest_digest, parse_sha256_digest};
use crate::result::{Binding, Poster, workload_result};
use crate::suite::{self, Suite};
use crate::{DeviceChoice, ProbeError, RunOptions, Timings, run_with};

/// Keys of the launcher's JSON parameters this runner reads.
pub mod params {
    /// `operator`: fetch the suite and the model from the operator (`--fetch`).
    pub const FETCH: &str = "fetch";
    /// The model directory (mounted read-only, or fetched into).
    pub const MODEL_DIR: &str = "modelDir";
    /// The probe suite file (the ConfigMap key mounted, or fetched into).
    pub const SUITE: &str = "suite";
    /// `sha256:HEX` of the suite's bytes; required when fetching.
    pub const SUITE_DIGEST: &str = "suiteDigest";
    /// The attested manifest digest, `sha256:HEX`.
    pub const MANIFEST_DIGEST: &str = "manifestDigest";
    /// A signed manifest (bundle or statement) naming each file's digest.
    pub const SIGNED_MANIFEST: &str = "signedManifest";
    /// `sha256` or `blake3` (the ModelAttestation's `spec.integrity.algorithm`).
    pub const HASH_ALGORITHM: &str = "hashAlgorithm";
    /// Shard size in bytes (`spec.integrity.shardSizeBytes`).
    pub const SHARD_SIZE_BYTES: &str = "shardSizeBytes";
    /// Every key, for messages.
    pub const ALL: [&str; 8] = [
        FETCH,
        MODEL_DIR,
        SUITE,
        SUITE_DIGEST,
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

/// Where the suite and the model come from when not from mounted files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FetchFrom {
    /// The operator's API (`/v1/workload-models/{id}/…`), with the pod's token.
    Operator,
}

impl FetchFrom {
    /// From a parameter's value; the error names it.
    fn parse_param(value: &str) -> Result<Self, ProbeError> {
        match value {
            "operator" => Ok(FetchFrom::Operator),
            other => Err(usage(format!(
                "parameter {}: {other:?} is not a place to fetch from (the only one is \"operator\")",
                params::FETCH
            ))),
        }
    }
}

/// Runs a behavioural probe suite on a model after checking its files against the
/// attested manifest, and posts the result to the operator.
#[derive(Debug, Clone, Parser)]
#[command(name = "lotabots-probe-runner", version)]
pub struct Args {
    /// Fetch the suite and the model from the operator into --suite and --model (which
    /// must be absent or empty) before anything else. Parameter: fetch.
    #[arg(long, env = "LOTABOTS_PROBE_FETCH", value_enum)]
    pub fetch: Option<FetchFrom>,
    /// The model directory. Parameter: modelDir.
    #[arg(long, env = "LOTABOTS_PROBE_MODEL", value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// The probe suite (YAML). Parameter: suite.
    #[arg(long, env = "LOTABOTS_PROBE_SUITE", value_name = "FILE")]
    pub suite: Option<PathBuf>,
    /// The suite's digest (sha256:HEX of its bytes): a suite that hashes otherwise is
    /// refused. Required with --fetch. Parameter: suiteDigest.
    #[arg(long, env = "LOTABOTS_SUITE_DIGEST", value_name = "sha256:HEX")]
    pub suite_digest: Option<String>,
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
    /// Print timings to stderr: fetch, verification, model load, probes per second.
    #[arg(long)]
    pub report: bool,
    /// The operator's base URL (https://…).
    #[arg(long, env = env::OPERATOR_URL, value_name = "URL")]
    pub operator_url: Option<String>,
    /// The pod-bound token the result is posted (and the model fetched) with.
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
    /// The digest the suite must have; `None`: whatever suite is mounted.
    pub suite_digest: Option<String>,
    /// What to fetch from the operator first; `None`: the files are mounted.
    pub fetch: Option<FetchPlan>,
    /// How to run.
    pub run: RunOptions,
    /// The operator: where the result is posted, and the suite and model fetched from;
    /// `None` with `--no-post` when nothing is fetched.
    pub operator: Option<OperatorSettings>,
    /// Whether the result is posted (not with `--no-post`).
    pub post: bool,
    /// The binding echoed in the result.
    pub binding: Binding,
}

/// How to reach the operator.
#[derive(Debug)]
pub struct OperatorSettings {
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
        let fetch = match self.fetch {
            Some(from) => Some(from),
            None => param(params::FETCH)
                .map(|v| FetchFrom::parse_param(&v))
                .transpose()?,
        };
        let suite_digest = self
            .suite_digest
            .clone()
            .or_else(|| param(params::SUITE_DIGEST))
            .map(|d| {
                parse_sha256_digest("suite digest", &d)
                    .map_err(|e| usage(format!("--suite-digest: {e}")))
            })
            .transpose()?;
        if fetch.is_some() && suite_digest.is_none() {
            return Err(usage(format!(
                "--suite-digest is required with --fetch (or the parameter {} in {}): a fetched suite is run only when it hashes to it",
                params::SUITE_DIGEST,
                env::PARAMS
            )));
        }
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
        let post = !self.no_post;
        let operator = if post || fetch.is_some() {
            let missing = |flag: &str, var: &str| {
                usage(if fetch.is_some() {
                    format!("{flag} (or {var}) is required to fetch the suite and the model")
                } else {
                    format!(
                        "{flag} (or {var}) is required to post the result; --no-post prints it instead"
                    )
                })
            };
            Some(OperatorSettings {
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
        } else {
            None
        };
        let binding = Binding {
            request_id: self.request_id.clone().unwrap_or_default(),
            nonce: self.nonce.clone().unwrap_or_default(),
            node: self.node.clone().unwrap_or_default(),
        };
        if fetch.is_some() && binding.request_id.is_empty() {
            return Err(usage(format!(
                "{} is required to fetch the suite and the model (the launcher sets it)",
                env::REQUEST_ID
            )));
        }
        if post {
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
        let (model, suite) = (PathBuf::from(model), PathBuf::from(suite));
        let fetch = fetch.map(|FetchFrom::Operator| FetchPlan {
            request_id: binding.request_id.clone(),
            suite: suite.clone(),
            model_dir: model.clone(),
            suite_digest: suite_digest.clone().unwrap_or_default(),
            manifest_digest: manifest_digest.clone(),
            retry: Retry::default(),
        });
        Ok(Settings {
            model,
            suite,
            suite_digest,
            fetch,
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
            operator,
            post,
            binding,
        })
    }
}

/// The suite to run: fetched (with the model) from the operator in fetch mode, else read
/// from its file; refused unless it hashes to the suite digest when one is given.
fn prepare(
    settings: &Settings,
    client: Option<&Client>,
    runtime: &tokio::runtime::Runtime,
) -> Result<(Suite, Option<Fetched>), ProbeError> {
    let parse = |bytes: &[u8]| {
        Suite::parse(bytes).map_err(|e| usage(format!("{}: {e}", settings.suite.display())))
    };
    if let Some(plan) = &settings.fetch {
        let client = client.ok_or_else(|| usage("fetching needs the operator's URL"))?;
        let fetched = runtime.block_on(crate::fetch::fetch(client, plan))?;
        return Ok((parse(&fetched.suite)?, Some(fetched)));
    }
    let path = &settings.suite;
    let bytes = std::fs::read(path).map_err(|e| usage(format!("{}: {e}", path.display())))?;
    if let Some(expected) = &settings.suite_digest {
        let found = suite::digest_of(&bytes);
        if &found != expected {
            return Err(ProbeError::SuiteDigest(format!(
                "{} hashes to {found}, not to the expected suite digest {expected}",
                path.display()
            )));
        }
    }
    Ok((parse(&bytes)?, None))
}

/// A client of the operator: its CA bundle read, the URL checked.
fn connect(o: &OperatorSettings) -> Result<Client, String> {
    let ca =
        std::fs::read(&o.ca_file).map_err(|e| format!("CA file {}: {e}", o.ca_file.display()))?;
    Client::new(&o.operator_url, &ca, o.token_file.clone()).map_err(|e| e.0)
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
    let client = match settings.operator.as_ref().map(connect).transpose() {
        Ok(client) => client,
        Err(e) => {
            say(&format!("error: {e}"));
            return ExitCode::from(2);
        }
    };
    let poster = client
        .clone()
        .filter(|_| settings.post)
        .map(Poster::with_client);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say(&format!("error: no async runtime: {e}"));
            return ExitCode::from(1);
        }
    };

    let started = Timestamp::now();
    let outcome = prepare(&settings, client.as_ref(), &runtime).and_then(|(suite, fetched)| {
        if let (true, Some(fetched)) = (args.report, &fetched) {
            say(&fetched.render());
        }
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
            let posted = runtime.block_on(poster.post(&result));
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
        assert!(!s.post);
        assert!(s.operator.is_none());
        assert!(s.fetch.is_none());
        assert!(s.suite_digest.is_none());
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
        assert!(s.post);
        assert_eq!(s.operator.unwrap().operator_url, "https://op");
    }

    /// The launcher's parameters of a probe pod in fetch mode.
    fn fetch_params() -> serde_json::Value {
        serde_json::json!({
            "fetch": "operator",
            "modelDir": "/work/model",
            "suite": "/work/suite.yaml",
            "manifestDigest": DIGEST,
            "suiteDigest": format!("sha256:{}", "AB".repeat(32)),
            "hashAlgorithm": "sha256",
        })
    }

    #[test]
    fn fetch_mode_from_the_parameters() {
        let mut a = parse(&["--no-post"]);
        a.params = Some(fetch_params().to_string());
        let e = a.settings().unwrap_err();
        assert!(
            e.to_string()
                .contains("--operator-url (or LOTABOTS_OPERATOR_URL) is required to fetch"),
            "{e}"
        );
        a.operator_url = Some("https://op".into());
        a.token_file = Some("/t".into());
        a.ca_file = Some("/ca".into());
        let e = a.settings().unwrap_err();
        assert!(
            e.to_string()
                .contains("LOTABOTS_WORKLOAD_ID is required to fetch"),
            "{e}"
        );
        a.request_id = Some("c0ffee".into());
        let s = a.settings().unwrap();
        // --no-post still fetches: the operator is needed, the result is not posted.
        assert!(!s.post);
        assert_eq!(s.operator.unwrap().operator_url, "https://op");
        let plan = s.fetch.unwrap();
        assert_eq!(plan.request_id, "c0ffee");
        assert_eq!(plan.model_dir, PathBuf::from("/work/model"));
        assert_eq!(plan.suite, PathBuf::from("/work/suite.yaml"));
        assert_eq!(plan.manifest_digest, DIGEST);
        // Normalised to lowercase, as the suite's own digest is written.
        assert_eq!(plan.suite_digest, format!("sha256:{}", "ab".repeat(32)));
        assert_eq!(s.suite_digest.as_deref(), Some(plan.suite_digest.as_str()));
    }

    #[test]
    fn fetch_mode_needs_a_known_source_and_a_suite_digest() {
        let mut a = parse(&["--no-post", "--request-id", "r"]);
        let mut p = fetch_params();
        p["fetch"] = "s3".into();
        a.params = Some(p.to_string());
        let e = a.settings().unwrap_err();
        assert_eq!(
            e.to_string(),
            "parameter fetch: \"s3\" is not a place to fetch from (the only one is \"operator\")"
        );
        assert_eq!(e.exit_code(), 2);
        let e = Args::try_parse_from(["lotabots-probe-runner", "--fetch", "s3"]).unwrap_err();
        assert!(e.to_string().contains("'s3'"), "{e}");

        let mut p = fetch_params();
        p.as_object_mut().unwrap().remove("suiteDigest");
        a.params = Some(p.to_string());
        let e = a.settings().unwrap_err();
        assert!(
            e.to_string().starts_with(
                "--suite-digest is required with --fetch (or the parameter suiteDigest"
            ),
            "{e}"
        );
        let mut p = fetch_params();
        p["suiteDigest"] = "sha256:beef".into();
        a.params = Some(p.to_string());
        let e = a.settings().unwrap_err();
        assert!(
            e.to_string().contains(
                "--suite-digest: suite digest \"sha256:beef\" is not sha256:<64 hex digits>"
            ),
            "{e}"
        );
        // The flag alone turns it on, as the parameter does.
        let mut a = parse(&[
            "--no-post",
            "--fetch",
            "operator",
            "--model",
            "m",
            "--suite",
            "s",
            "--manifest-digest",
            DIGEST,
            "--request-id",
            "r",
            "--operator-url",
            "https://op",
            "--token-file",
            "/t",
            "--ca-file",
            "/ca",
        ]);
        assert!(a.settings().is_err());
        a.suite_digest = Some(DIGEST.into());
        assert!(a.settings().unwrap().fetch.is_some());
    }
}
