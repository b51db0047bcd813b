//! What the launcher hands the pod (environment variables of
//! [`lotabots_crds::workload::env`]) checked and turned into [`Settings`], the result's
//! identity and where to deliver it. Pure functions: the CLI gathers the raw values.

use std::collections::BTreeMap;
use std::path::PathBuf;

use lotabots_crds::evidence::parse_nonce;
use lotabots_crds::workload::env;

use crate::reference::{MAX_N, MIN_N};
use crate::{DEFAULT_MATMUL_N, DEFAULT_MEMORY_SHARE, MAX_MEMORY_SHARE, Settings};

/// A value the self-test cannot run with; exit code 2.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// The raw inputs, as flags or environment variables gave them.
#[derive(Clone, Debug, Default)]
pub struct Raw {
    /// [`env::NONCE`].
    pub nonce: Option<String>,
    /// [`env::NODE`].
    pub node: Option<String>,
    /// [`env::REQUEST_ID`].
    pub request_id: Option<String>,
    /// [`env::OPERATOR_URL`].
    pub operator_url: Option<String>,
    /// [`env::TOKEN_FILE`].
    pub token_file: Option<PathBuf>,
    /// [`env::CA_FILE`].
    pub ca_file: Option<PathBuf>,
    /// [`env::PARAMS`].
    pub params: Option<String>,
    /// `--matmul-n` (overrides `matmulN` of the params).
    pub matmul_n: Option<u32>,
    /// `--memory-share` (overrides `memoryShare` of the params).
    pub memory_share: Option<f64>,
    /// `--matmul-runs`.
    pub matmul_runs: u32,
    /// `--bandwidth-mib`.
    pub bandwidth_mib: u64,
    /// `--bandwidth-runs`.
    pub bandwidth_runs: u32,
    /// `--no-post`: print only, deliver nothing.
    pub no_post: bool,
}

/// Who the result is about: echoed in it and checked by the operator.
#[derive(Clone, Debug, PartialEq)]
pub struct Identity {
    /// The workload request's id.
    pub request_id: String,
    /// The node the pod was launched for.
    pub node: String,
    /// The nonce, lowercase hex.
    pub nonce_hex: String,
}

/// Where the result goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Delivery {
    /// Printed only (`--no-post`).
    PrintOnly,
    /// Posted to the operator.
    Post {
        /// Base URL (`https://…`).
        operator_url: String,
        /// The projected, pod-bound token (re-read for every attempt).
        token_file: PathBuf,
        /// CA bundle verifying the operator.
        ca_file: PathBuf,
    },
}

/// Everything a run needs, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    /// What the checks do.
    pub settings: Settings,
    /// Who the result is about.
    pub identity: Identity,
    /// Where it goes.
    pub delivery: Delivery,
}

/// The self-test's entries of [`env::PARAMS`] (a JSON object of strings, as the launcher
/// writes `WorkloadRequest::params`; JSON numbers are taken too).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params {
    /// `memoryShare`.
    pub memory_share: Option<f64>,
    /// `matmulN`.
    pub matmul_n: Option<u32>,
}

/// Parses [`env::PARAMS`]. Keys meant for other workloads are ignored (and logged), so the
/// launcher may pass a policy's parameters through unfiltered.
pub fn parse_params(json: &str) -> Result<Params, ConfigError> {
    let map: BTreeMap<String, serde_json::Value> = serde_json::from_str(json)
        .map_err(|e| bad(format!("{}: not a JSON object: {e}", env::PARAMS)))?;
    let mut params = Params::default();
    for (key, value) in &map {
        let text = match value {
            serde_json::Value::String(s) => s.trim().to_owned(),
            serde_json::Value::Number(n) => n.to_string(),
            other => {
                return Err(bad(format!(
                    "{}: {key} must be a string or a number, got {other}",
                    env::PARAMS
                )));
            }
        };
        match key.as_str() {
            "memoryShare" => {
                params.memory_share = Some(text.parse().map_err(|_| {
                    bad(format!(
                        "{}: memoryShare {text:?} is not a number",
                        env::PARAMS
                    ))
                })?);
            }
            "matmulN" => {
                params.matmul_n = Some(text.parse().map_err(|_| {
                    bad(format!(
                        "{}: matmulN {text:?} is not a whole number",
                        env::PARAMS
                    ))
                })?);
            }
            other => tracing::warn!(
                key = other,
                "ignoring a parameter the self-test does not use"
            ),
        }
    }
    Ok(params)
}

/// Checks the raw inputs. `random_nonce` supplies a nonce for `--no-post` runs by hand
/// that were given none (nothing verifies it then).
pub fn resolve(
    raw: &Raw,
    random_nonce: impl FnOnce() -> [u8; 32],
) -> Result<Resolved, ConfigError> {
    let params = match raw.params.as_deref().map(str::trim) {
        Some(json) if !json.is_empty() => parse_params(json)?,
        _ => Params::default(),
    };
    let matmul_n = raw.matmul_n.or(params.matmul_n).unwrap_or(DEFAULT_MATMUL_N);
    if !(MIN_N..=MAX_N).contains(&matmul_n) {
        return Err(bad(format!(
            "matrix size {matmul_n} is outside {MIN_N}..={MAX_N}"
        )));
    }
    let memory_share = raw
        .memory_share
        .or(params.memory_share)
        .unwrap_or(DEFAULT_MEMORY_SHARE);
    // `!(x > 0)` rather than `x <= 0` so that NaN is refused too.
    if !(memory_share > 0.0 && memory_share <= MAX_MEMORY_SHARE) {
        return Err(bad(format!(
            "memory share {memory_share} is outside (0, {MAX_MEMORY_SHARE}]: the share of free \
             device memory the pattern test covers"
        )));
    }
    if raw.matmul_runs == 0 || raw.bandwidth_runs == 0 {
        return Err(bad("timed runs must be at least 1"));
    }
    if raw.bandwidth_mib == 0 {
        return Err(bad("the bandwidth buffer must be at least 1 MiB"));
    }

    let posting = !raw.no_post;
    let require = |value: &Option<String>, var: &str, what: &str| -> Result<String, ConfigError> {
        match value.as_deref().map(str::trim) {
            Some(v) if !v.is_empty() => Ok(v.to_owned()),
            _ => Err(bad(format!(
                "{var} is not set: {what} (set by the launcher; pass --no-post to run by hand)"
            ))),
        }
    };
    let nonce = match &raw.nonce {
        Some(hex_nonce) => {
            parse_nonce(hex_nonce).map_err(|e| bad(format!("{}: {e}", env::NONCE)))?
        }
        None if posting => {
            return Err(bad(format!(
                "{} is not set: the node attestation's nonce the result is bound to (set by the \
                 launcher; pass --no-post to run by hand)",
                env::NONCE
            )));
        }
        None => random_nonce(),
    };
    let request_id = if posting {
        let id = require(
            &raw.request_id,
            env::REQUEST_ID,
            "the workload request's id",
        )?;
        if !(8..=48).contains(&id.len())
            || !id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad(format!(
                "{}: {id:?} is not 8 to 48 lowercase hex digits",
                env::REQUEST_ID
            )));
        }
        id
    } else {
        raw.request_id
            .clone()
            .unwrap_or_else(|| "manual".to_owned())
    };
    let node = if posting {
        require(&raw.node, env::NODE, "the node the pod was launched for")?
    } else {
        raw.node.clone().unwrap_or_else(|| "unknown".to_owned())
    };
    let delivery = if posting {
        let operator_url = require(&raw.operator_url, env::OPERATOR_URL, "the operator's URL")?;
        let path = |p: &Option<PathBuf>, var: &str, what: &str| {
            p.clone()
                .filter(|p| !p.as_os_str().is_empty())
                .ok_or_else(|| bad(format!("{var} is not set: {what}")))
        };
        Delivery::Post {
            operator_url,
            token_file: path(
                &raw.token_file,
                env::TOKEN_FILE,
                "the projected ServiceAccount token to post with",
            )?,
            ca_file: path(
                &raw.ca_file,
                env::CA_FILE,
                "the CA bundle verifying the operator",
            )?,
        }
    } else {
        Delivery::PrintOnly
    };
    Ok(Resolved {
        settings: Settings {
            matmul_n,
            matmul_runs: raw.matmul_runs,
            memory_share,
            bandwidth_bytes: raw.bandwidth_mib << 20,
            bandwidth_runs: raw.bandwidth_runs,
            nonce,
        },
        identity: Identity {
            request_id,
            node,
            nonce_hex: hex::encode(nonce),
        },
        delivery,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn posting() -> Raw {
        Raw {
            nonce: Some(NONCE.into()),
            node: Some("gpu-node-1".into()),
            request_id: Some("0123456789abcdef".into()),
            operator_url: Some("https://operator.lotabots:8443".into()),
            token_file: Some("/var/run/secrets/lotabots/token".into()),
            ca_file: Some("/etc/lotabots/ca.crt".into()),
            params: Some(r#"{"memoryShare":"0.5"}"#.into()),
            matmul_runs: 5,
            bandwidth_mib: 1024,
            bandwidth_runs: 20,
            ..Raw::default()
        }
    }

    fn no_random() -> [u8; 32] {
        panic!("a nonce was given; none should be drawn")
    }

    #[test]
    fn launcher_inputs_resolve() {
        let r = resolve(&posting(), no_random).unwrap();
        assert_eq!(r.identity.nonce_hex, NONCE);
        assert_eq!(r.settings.nonce[1], 0x11);
        assert_eq!(r.settings.memory_share, 0.5);
        assert_eq!(r.settings.matmul_n, DEFAULT_MATMUL_N);
        assert_eq!(r.settings.bandwidth_bytes, 1 << 30);
        assert!(matches!(r.delivery, Delivery::Post { .. }));
    }

    #[test]
    fn nonce_must_be_64_hex() {
        for badn in ["abcd", &"zz".repeat(32), ""] {
            let raw = Raw {
                nonce: Some(badn.to_owned()),
                ..posting()
            };
            let e = resolve(&raw, no_random).unwrap_err();
            assert!(e.0.starts_with("LOTABOTS_NONCE: nonce"), "{e}");
        }
        let raw = Raw {
            nonce: None,
            ..posting()
        };
        let e = resolve(&raw, no_random).unwrap_err();
        assert!(e.0.starts_with("LOTABOTS_NONCE is not set"), "{e}");
    }

    #[test]
    fn uppercase_nonce_is_normalised() {
        let raw = Raw {
            nonce: Some(NONCE.to_uppercase()),
            ..posting()
        };
        assert_eq!(resolve(&raw, no_random).unwrap().identity.nonce_hex, NONCE);
    }

    #[test]
    fn posting_needs_every_launcher_variable() {
        type Unset = fn(&mut Raw);
        let cases: [(Unset, &str); 5] = [
            (|r| r.node = None, "LOTABOTS_NODE is not set"),
            (|r| r.request_id = None, "LOTABOTS_WORKLOAD_ID is not set"),
            (
                |r| r.operator_url = None,
                "LOTABOTS_OPERATOR_URL is not set",
            ),
            (|r| r.token_file = None, "LOTABOTS_TOKEN_FILE is not set"),
            (|r| r.ca_file = None, "LOTABOTS_CA_FILE is not set"),
        ];
        for (unset, msg) in cases {
            let mut raw = posting();
            unset(&mut raw);
            let e = resolve(&raw, no_random).unwrap_err();
            assert!(e.0.starts_with(msg), "{e}");
        }
    }

    #[test]
    fn request_id_is_checked_like_the_launcher_does() {
        for id in ["ABCDEF0123", "short", "0123456789abcdefg"] {
            let raw = Raw {
                request_id: Some(id.into()),
                ..posting()
            };
            let e = resolve(&raw, no_random).unwrap_err();
            assert!(e.0.contains("lowercase hex"), "{e}");
        }
    }

    #[test]
    fn by_hand_a_nonce_is_drawn_and_nothing_is_required() {
        let raw = Raw {
            no_post: true,
            matmul_runs: 1,
            bandwidth_mib: 1,
            bandwidth_runs: 1,
            ..Raw::default()
        };
        let r = resolve(&raw, || [0xab; 32]).unwrap();
        assert_eq!(r.identity.nonce_hex, "ab".repeat(32));
        assert_eq!(r.delivery, Delivery::PrintOnly);
        assert_eq!(r.identity.node, "unknown");
    }

    #[test]
    fn flags_override_params_and_both_are_bounded() {
        let raw = Raw {
            memory_share: Some(0.1),
            matmul_n: Some(64),
            params: Some(r#"{"memoryShare":"0.5","matmulN":2048}"#.into()),
            ..posting()
        };
        let r = resolve(&raw, no_random).unwrap();
        assert_eq!((r.settings.memory_share, r.settings.matmul_n), (0.1, 64));
        let raw = Raw {
            params: Some(r#"{"matmulN":"2048"}"#.into()),
            ..posting()
        };
        assert_eq!(resolve(&raw, no_random).unwrap().settings.matmul_n, 2048);

        for share in [0.0, -0.1, 0.95, f64::NAN] {
            let raw = Raw {
                memory_share: Some(share),
                ..posting()
            };
            let e = resolve(&raw, no_random).unwrap_err();
            assert!(e.0.starts_with("memory share"), "{e}");
        }
        for n in [8, 100_000] {
            let raw = Raw {
                matmul_n: Some(n),
                ..posting()
            };
            let e = resolve(&raw, no_random).unwrap_err();
            assert!(e.0.starts_with("matrix size"), "{e}");
        }
    }

    #[test]
    fn params_are_parsed_strictly_where_they_matter() {
        assert_eq!(parse_params("{}").unwrap(), Params::default());
        assert_eq!(
            parse_params(r#"{"memoryShare":"0.3","suite":"x"}"#).unwrap(),
            Params {
                memory_share: Some(0.3),
                matmul_n: None
            }
        );
        let e = parse_params(r#"{"memoryShare":"a lot"}"#).unwrap_err();
        assert!(e.0.contains("memoryShare \"a lot\" is not a number"), "{e}");
        let e = parse_params(r#"{"matmulN":"1.5"}"#).unwrap_err();
        assert!(e.0.contains("matmulN"), "{e}");
        let e = parse_params("[1]").unwrap_err();
        assert!(
            e.0.starts_with("LOTABOTS_WORKLOAD_PARAMS: not a JSON object"),
            "{e}"
        );
        let e = parse_params(r#"{"memoryShare":[1]}"#).unwrap_err();
        assert!(e.0.contains("must be a string or a number"), "{e}");
    }
}
